#!/bin/sh
# First start of the compose PostgreSQL: the SeaweedFS filer's role and database (its
# postgres2 store: every object's name), the database open to that role only. A
# PostgreSQL volume made before this file runs no init script again: the one-shot
# postgres-init service runs it at every up (safe to run again: created only if missing,
# the grants made again).
# The password as in postgres-init.sh: \getenv, quoted by :'name'.
set -eu
psql -v ON_ERROR_STOP=1 --username postgres <<'SQL'
\getenv seaweedfs DB_SEAWEEDFS_PASSWORD
SELECT 'CREATE ROLE seaweedfs' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'seaweedfs') \gexec
ALTER ROLE seaweedfs LOGIN PASSWORD :'seaweedfs';
SELECT 'CREATE DATABASE seaweedfs OWNER seaweedfs' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'seaweedfs') \gexec
REVOKE ALL ON DATABASE seaweedfs FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE seaweedfs TO seaweedfs;
SQL
