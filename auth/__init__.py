"""Identity: the Keycloak realm as code, and the provisioning that applies it."""
