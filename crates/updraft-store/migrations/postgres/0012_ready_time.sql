-- When a task instance last became ready (`scheduled`: its trigger rule met, or its
-- retry time reached), for the scheduling-delay metric (ready -> running).
ALTER TABLE task_instances ADD COLUMN scheduled_at BIGINT;
