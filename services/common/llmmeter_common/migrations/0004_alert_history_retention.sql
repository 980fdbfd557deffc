-- Alert history is deleted past its retention (alerts service, leader only, hourly):
-- these indexes keep those deletes from scanning the whole history.
CREATE INDEX alert_events_at_idx ON alert_events (at);
CREATE INDEX alert_outbox_finished_idx ON alert_outbox (created_at) WHERE status <> 'pending';
