-- The text of the DAG file a version was read from, for the UI's code view and
-- the API. NULL for versions recorded before this migration.
ALTER TABLE dag_versions ADD COLUMN source TEXT;
