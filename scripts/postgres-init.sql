-- docker-compose.yml: the Prefect server's database beside Label Studio's, owned by the same role.
-- The postgres image runs this once, when its data volume is empty. A volume made before it needs it by hand:
--   docker compose exec -T postgres psql -U labelstudio -d labelstudio < scripts/postgres-init.sql
CREATE DATABASE prefect;
\connect prefect
CREATE EXTENSION IF NOT EXISTS pg_trgm;
