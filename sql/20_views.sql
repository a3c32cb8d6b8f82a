-- Views that make the raw sources pleasant to query.

-- Online orders, read out of the Segment 'Order Completed' events.
CREATE VIEW web_orders AS
SELECT
  message_id,
  user_id,
  anonymous_id,
  properties ->> 'order_id'                         AS order_id,
  CAST(properties ->> 'revenue' AS DECIMAL(12, 2))  AS revenue,
  properties ->> 'currency'                         AS currency,
  context ->> 'channel'                             AS channel,
  "timestamp"                                       AS ordered_at
FROM events
WHERE type = 'track' AND event = 'Order Completed';

-- Every sale in one place, online and in store, with whatever identifies the buyer.
CREATE VIEW all_sales AS
SELECT 'web' AS sales_channel, order_id AS sale_id, message_id, CAST(NULL AS VARCHAR) AS store_id,
       user_id, CAST(NULL AS VARCHAR) AS loyalty_card, revenue AS amount, ordered_at AS sold_at
FROM web_orders
UNION ALL
SELECT 'store', sale_id, CAST(NULL AS VARCHAR), store_id, CAST(NULL AS VARCHAR), loyalty_card, amount, sold_at
FROM pos_sales;
