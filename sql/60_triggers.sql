-- Moments that matter, turned into messages on the action queue (the `actions` table).
-- Each trigger runs on its schedule (or REFRESH TRIGGER now; EXPLAIN TRIGGER for a dry run)
-- and only rows that turned true since its last run fire. Consent (from profiles), caps,
-- quiet hours, holdouts and required fields are applied before anything is queued.
-- As in 50_segments.sql, the demo's clock is its latest data, not today.

-- A product put in the cart an hour or more ago, and no order since.
CREATE TRIGGER cart_abandoned EVERY '5 minutes' CHANNEL email
WITH (require = 'first_name', cap = '1 per 7 days', holdout = '10%', priority = 10,
      quiet_hours = '21:00-08:00', dedup_key = 'added_at')
AS
WITH clock AS (SELECT max("timestamp") AS now FROM events),
added AS (
  SELECT r.profile_id, max(e."timestamp") AS added_at,
         last_value(e.properties ->> 'name' ORDER BY e."timestamp") AS product_name
  FROM events e
  JOIN customers_records r ON r.record_key = 'web:' || e.message_id
  CROSS JOIN clock
  WHERE e.event = 'Product Added' AND e."timestamp" > clock.now - INTERVAL '2 days'
  GROUP BY r.profile_id
),
ordered AS (
  SELECT r.profile_id, max(o.ordered_at) AS ordered_at
  FROM web_orders o
  JOIN customers_records r ON r.record_key = 'web:' || o.message_id
  GROUP BY r.profile_id
)
SELECT a.profile_id, p.first_name, a.product_name, a.added_at
FROM added a
JOIN profiles p ON p.profile_id = a.profile_id
CROSS JOIN clock
LEFT JOIN ordered o ON o.profile_id = a.profile_id AND o.ordered_at > a.added_at
WHERE a.added_at < clock.now - INTERVAL '1 hour' AND o.profile_id IS NULL;

-- A first purchase in the last week: the welcome series.
CREATE TRIGGER welcome_first_purchase EVERY '5 minutes' CHANNEL email
WITH (require = 'first_name', holdout = '10%', priority = 5)
AS
SELECT profile_id, first_name, last_order_at
FROM profiles, (SELECT max(last_order_at) AS now FROM profiles) clock
WHERE order_count = 1 AND last_order_at > clock.now - INTERVAL '7 days';

-- Lapsed buyers (a segment): win them back, at most once a month.
CREATE TRIGGER win_back EVERY '1 hour' CHANNEL email
WITH (require = 'first_name', cap = '1 per 30 days', priority = 1)
AS
SELECT l.profile_id, p.first_name, l.last_order_at
FROM lapsed_buyers l JOIN profiles p ON p.profile_id = l.profile_id;

-- The Paris Bercy store changes its hours: tell the people who shop there, by SMS. The
-- hours are the dedup key, so a later change fires again.
CREATE TRIGGER store_hours_s01 EVERY '1 hour' CHANNEL sms
WITH (dedup_key = 'opening_hours', quiet_hours = '20:00-09:00')
AS
SELECT p.profile_id, p.first_name, s.name AS store_name, s.opening_hours
FROM profiles p JOIN stores s ON s.store_id = p.last_store
WHERE s.store_id = 'S01';
