#!/bin/sh
# First start of the compose PostgreSQL: one role and database per component, each
# database open to its own role only (PostgreSQL lets PUBLIC, every role, connect to a new
# database). The passwords come from the environment through psql's \getenv (PostgreSQL
# 15), quoted as literals by :'name': never on a command line, never pasted into the SQL.
# Safe to run again on a volume made before (roles and databases are created only if
# missing, the passwords set from the environment, the grants made again): the one-shot
# postgres-init service runs it at every up.
set -eu
psql -v ON_ERROR_STOP=1 --username postgres <<'SQL'
\getenv central DB_CENTRAL_PASSWORD
\getenv indexer DB_INDEXER_PASSWORD
\getenv keycloak DB_KEYCLOAK_PASSWORD
\getenv monitoring DB_MONITORING_PASSWORD
SELECT 'CREATE ROLE orthanc_central' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'orthanc_central') \gexec
ALTER ROLE orthanc_central LOGIN PASSWORD :'central';
SELECT 'CREATE DATABASE orthanc_central OWNER orthanc_central' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'orthanc_central') \gexec
REVOKE ALL ON DATABASE orthanc_central FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE orthanc_central TO orthanc_central;
SELECT 'CREATE ROLE indexer' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'indexer') \gexec
ALTER ROLE indexer LOGIN PASSWORD :'indexer';
SELECT 'CREATE DATABASE indexer OWNER indexer' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'indexer') \gexec
REVOKE ALL ON DATABASE indexer FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE indexer TO indexer;
SELECT 'CREATE ROLE keycloak' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'keycloak') \gexec
ALTER ROLE keycloak LOGIN PASSWORD :'keycloak';
SELECT 'CREATE DATABASE keycloak OWNER keycloak' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'keycloak') \gexec
REVOKE ALL ON DATABASE keycloak FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE keycloak TO keycloak;
-- Prometheus's PostgreSQL exporter (#15): statistics only (pg_monitor), no database of ours
SELECT 'CREATE ROLE monitoring' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'monitoring') \gexec
ALTER ROLE monitoring LOGIN CONNECTION LIMIT 3 PASSWORD :'monitoring';
GRANT pg_monitor TO monitoring;
SQL
