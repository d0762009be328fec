-- Mapped task instances (`for_each`): one task instance per item, told apart by
-- `map_index` (-1: not mapped, or not expanded yet), with the item it runs (JSON).
ALTER TABLE task_instances ADD COLUMN map_index INTEGER NOT NULL DEFAULT -1, ADD COLUMN map_item TEXT;
ALTER TABLE task_instances DROP CONSTRAINT task_instances_run_pk_task_id_key;
ALTER TABLE task_instances ADD CONSTRAINT task_instances_run_pk_task_id_map_index_key UNIQUE (run_pk, task_id, map_index);
