-- Run once as the database owner: one database, one schema per application. MLflow and Optuna both
-- record their migrations in a table named alembic_version, so they cannot share a schema (MLflow then
-- fails with "Can't locate revision"); each connects with ?options=-csearch_path%3D<schema>.
CREATE DATABASE deptune;
\connect deptune
CREATE ROLE mlflow LOGIN PASSWORD 'CHANGE-ME';    -- placeholder: set real passwords out of band
CREATE ROLE optuna LOGIN PASSWORD 'CHANGE-ME';
CREATE SCHEMA mlflow AUTHORIZATION mlflow;
CREATE SCHEMA mlflow_auth AUTHORIZATION mlflow;
CREATE SCHEMA optuna AUTHORIZATION optuna;
