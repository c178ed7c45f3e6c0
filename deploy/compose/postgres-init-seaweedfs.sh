#!/bin/sh
# First start of the compose PostgreSQL: the SeaweedFS filer's role and database (its
# postgres2 store: every object's name). A PostgreSQL volume made before this file runs no
# init script again: create them by hand (docs/archive.md, Reliability). The password as
# in postgres-init.sh: \getenv, quoted by :'name'.
set -eu
psql -v ON_ERROR_STOP=1 --username postgres <<'SQL'
\getenv seaweedfs DB_SEAWEEDFS_PASSWORD
CREATE ROLE seaweedfs LOGIN PASSWORD :'seaweedfs';
CREATE DATABASE seaweedfs OWNER seaweedfs;
SQL
