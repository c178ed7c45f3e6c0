#!/bin/sh
# First start of the compose PostgreSQL: the SeaweedFS filer's role and database (its
# postgres2 store: every object's name). A PostgreSQL volume made before this file runs no
# init script again: create them by hand (docs/archive.md, Reliability).
set -eu
psql -v ON_ERROR_STOP=1 --username postgres <<SQL
CREATE ROLE seaweedfs LOGIN PASSWORD '${DB_SEAWEEDFS_PASSWORD}';
CREATE DATABASE seaweedfs OWNER seaweedfs;
SQL
