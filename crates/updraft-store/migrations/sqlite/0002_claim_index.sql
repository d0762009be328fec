-- Claims take the highest-priority queued task instances. This index holds only the
-- queued ones, in claim order, so a claim costs the same with a million finished
-- task instances as with none.
CREATE INDEX task_instances_queued ON task_instances (priority DESC, queued_at, id) WHERE state = 'queued';
