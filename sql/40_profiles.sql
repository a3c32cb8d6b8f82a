-- The 360° view: one row per person, with the traits marketing asks about.

-- Every sale, online or in store, attributed to the profile of the record it came from.
CREATE VIEW profile_sales AS
SELECT r.profile_id, s.sales_channel, s.store_id, s.amount, s.sold_at
FROM all_sales s
JOIN customers_records r
  ON r.record_key = CASE WHEN s.sales_channel = 'web' THEN 'web:' || s.message_id ELSE 'pos:' || s.sale_id END;

-- What the CRM says, latest contact first.
CREATE VIEW profile_contacts AS
SELECT r.profile_id, c.first_name, c.email_opt_in, c.sms_opt_in, c.updated_at
FROM crm_contacts c
JOIN customers_records r ON r.record_key = 'crm:' || c.contact_id;

-- Materialized: segments, triggers and lookups read one stored row per person instead of
-- recomputing these joins each time. The refresh is skipped when no input changed.
CREATE MATERIALIZED VIEW profiles REFRESH EVERY '1 minute' AS
WITH
ids AS (
  SELECT profile_id,
         min(first_seen) AS first_seen,
         max(last_seen) AS last_seen,
         bool_or(id_type = 'email') AS has_email,
         bool_or(id_type = 'phone') AS has_phone,
         bool_or(id_type = 'user_id') AS has_account,
         bool_or(id_type = 'loyalty_card') AS has_card
  FROM customers_identities GROUP BY profile_id
),
sales AS (
  SELECT profile_id,
         sum(amount) AS lifetime_value,
         count(*) AS order_count,
         max(sold_at) AS last_order_at,
         last_value(store_id ORDER BY sold_at) FILTER (WHERE store_id IS NOT NULL) AS last_store
  FROM profile_sales GROUP BY profile_id
),
crm AS (
  SELECT profile_id,
         last_value(first_name ORDER BY updated_at)
           FILTER (WHERE first_name IS NOT NULL AND trim(first_name) <> '') AS first_name,
         last_value(email_opt_in ORDER BY updated_at) AS email_opt_in,
         last_value(sms_opt_in ORDER BY updated_at) AS sms_opt_in
  FROM profile_contacts GROUP BY profile_id
)
SELECT
  ids.profile_id,
  ids.first_seen,
  ids.last_seen,
  coalesce(sales.lifetime_value, 0) AS lifetime_value,
  coalesce(sales.order_count, 0) AS order_count,
  sales.last_order_at,
  sales.last_store,
  crm.first_name,
  coalesce(crm.email_opt_in, false) AS email_opt_in,
  coalesce(crm.sms_opt_in, false) AS sms_opt_in,
  concat_ws(',',
    CASE WHEN ids.has_email THEN 'email' END,
    CASE WHEN ids.has_phone THEN 'sms' END,
    CASE WHEN ids.has_account THEN 'web' END,
    CASE WHEN ids.has_card THEN 'store' END) AS channels
FROM ids
LEFT JOIN sales ON sales.profile_id = ids.profile_id
LEFT JOIN crm ON crm.profile_id = ids.profile_id;
