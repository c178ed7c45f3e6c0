#!/bin/sh
# First start of the compose PostgreSQL: one role and database per component.
set -eu
psql -v ON_ERROR_STOP=1 --username postgres <<SQL
CREATE ROLE orthanc_central LOGIN PASSWORD '${DB_CENTRAL_PASSWORD}';
CREATE DATABASE orthanc_central OWNER orthanc_central;
CREATE ROLE indexer LOGIN PASSWORD '${DB_INDEXER_PASSWORD}';
CREATE DATABASE indexer OWNER indexer;
CREATE ROLE keycloak LOGIN PASSWORD '${DB_KEYCLOAK_PASSWORD}';
CREATE DATABASE keycloak OWNER keycloak;
SQL
