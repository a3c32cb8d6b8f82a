-- Audiences, as SQL over profiles and events. c360 keeps each one fresh and remembers who
-- entered and left it, and when (segment_members, segment_changes, segments).
--
-- The demo's history ends on its last event, so its segments measure time from there (the
-- `clock` below) and read the same whichever day you run them; in production write now().

-- Big spenders, with what personalises a message to them.
CREATE SEGMENT high_value REFRESH EVERY '5 minutes' AS
SELECT profile_id, lifetime_value, first_name
FROM profiles
WHERE lifetime_value >= 1000;

-- Bought at least twice, then nothing for six months.
CREATE SEGMENT lapsed_buyers REFRESH EVERY '1 hour' AS
WITH clock AS (SELECT max(last_order_at) AS now FROM profiles)
SELECT profile_id, last_order_at, order_count
FROM profiles, clock
WHERE order_count >= 2 AND last_order_at < clock.now - INTERVAL '180 days';

-- Can be texted: a known phone number and an SMS opt-in.
CREATE SEGMENT sms_reachable REFRESH EVERY '5 minutes' AS
SELECT profile_id, first_name
FROM profiles
WHERE sms_opt_in AND channels LIKE '%sms%';

-- Looked at products in the last 30 days and bought nothing since: the category they looked
-- at most is what a message would be about.
CREATE SEGMENT browsed_not_bought REFRESH EVERY '15 minutes' AS
WITH clock AS (SELECT max("timestamp") AS now FROM events),
viewed AS (
  SELECT r.profile_id, e.properties ->> 'category' AS category, count(*) AS views
  FROM events e
  JOIN customers_records r ON r.record_key = 'web:' || e.message_id
  CROSS JOIN clock
  WHERE e.event = 'Product Viewed' AND e."timestamp" > clock.now - INTERVAL '30 days'
  GROUP BY 1, 2
),
bought AS (
  SELECT DISTINCT s.profile_id
  FROM profile_sales s CROSS JOIN clock
  WHERE s.sold_at > clock.now - INTERVAL '30 days'
)
SELECT profile_id, first_value(category ORDER BY views DESC, category) AS top_category, sum(views) AS views
FROM viewed
WHERE profile_id NOT IN (SELECT profile_id FROM bought)
GROUP BY profile_id;

-- Shop within 20 km of the Paris Bercy store (by the store they last bought in).
CREATE SEGMENT near_paris_bercy REFRESH EVERY '1 hour' AS
SELECT p.profile_id, s.name AS their_store,
       round(2 * 6371 * asin(sqrt(
         power(sin(radians(s.latitude - home.latitude) / 2), 2)
         + cos(radians(home.latitude)) * cos(radians(s.latitude))
           * power(sin(radians(s.longitude - home.longitude) / 2), 2))), 1) AS km
FROM profiles p
JOIN stores s ON s.store_id = p.last_store
CROSS JOIN (SELECT latitude, longitude FROM stores WHERE store_id = 'S01') home
WHERE 2 * 6371 * asin(sqrt(
        power(sin(radians(s.latitude - home.latitude) / 2), 2)
        + cos(radians(home.latitude)) * cos(radians(s.latitude))
          * power(sin(radians(s.longitude - home.longitude) / 2), 2))) < 20;
