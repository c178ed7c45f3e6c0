#!/bin/sh
# First start of the compose PostgreSQL: one role and database per component. The
# passwords come from the environment through psql's \getenv (PostgreSQL 15), quoted as
# literals by :'name': never on a command line, never pasted into the SQL.
set -eu
psql -v ON_ERROR_STOP=1 --username postgres <<'SQL'
\getenv central DB_CENTRAL_PASSWORD
\getenv indexer DB_INDEXER_PASSWORD
\getenv keycloak DB_KEYCLOAK_PASSWORD
CREATE ROLE orthanc_central LOGIN PASSWORD :'central';
CREATE DATABASE orthanc_central OWNER orthanc_central;
CREATE ROLE indexer LOGIN PASSWORD :'indexer';
CREATE DATABASE indexer OWNER indexer;
CREATE ROLE keycloak LOGIN PASSWORD :'keycloak';
CREATE DATABASE keycloak OWNER keycloak;
SQL
