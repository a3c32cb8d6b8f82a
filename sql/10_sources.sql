-- The demo retailer's sources, as they arrive from each system.
-- ${sources} is a workspace variable: the bundled demo by default,
-- `--var sources=DIR` for data written by `c360 generate --out DIR`.

-- Web and app events, in the Segment spec (properties, traits, context are JSON text):
-- the bundled history, plus what the HTTP collector lands in `landed.events` while c360
-- runs. The view is what everything downstream reads, so a tracked event reaches the
-- identity graph at its next refresh.
CREATE EXTERNAL TABLE bundled_events
STORED AS PARQUET
LOCATION '${sources}/events/';

CREATE VIEW events AS
SELECT message_id, type, anonymous_id, user_id, event, properties, traits, context, "timestamp",
       CAST(NULL AS VARCHAR) AS name, CAST(NULL AS VARCHAR) AS group_id,
       CAST(NULL AS VARCHAR) AS previous_id, "timestamp" AS received_at
FROM bundled_events
UNION ALL
SELECT message_id, type, anonymous_id, user_id, event, properties, traits, context, "timestamp",
       name, group_id, previous_id, received_at
FROM landed.events;

-- Till receipts from the 40 stores, and their lines.
CREATE EXTERNAL TABLE pos_sales
STORED AS PARQUET
LOCATION '${sources}/pos_sales/';

CREATE EXTERNAL TABLE pos_sale_items
STORED AS PARQUET
LOCATION '${sources}/pos_sale_items/';

-- The CRM export: contacts with consent flags.
CREATE EXTERNAL TABLE crm_contacts (
  contact_id   VARCHAR NOT NULL,
  customer_id  VARCHAR,
  email        VARCHAR,
  phone        VARCHAR,
  first_name   VARCHAR,
  last_name    VARCHAR,
  loyalty_card VARCHAR,
  city         VARCHAR,
  postcode     VARCHAR,
  country      VARCHAR,
  email_opt_in BOOLEAN,
  sms_opt_in   BOOLEAN,
  created_at   TIMESTAMP WITH TIME ZONE,
  updated_at   TIMESTAMP WITH TIME ZONE
)
STORED AS CSV
LOCATION '${sources}/crm_contacts.csv'
OPTIONS ('format.has_header' 'true');

-- The help desk's tickets, exported as newline-delimited JSON.
CREATE EXTERNAL TABLE support_tickets (
  ticket_id    VARCHAR NOT NULL,
  email        VARCHAR,
  phone        VARCHAR,
  subject      VARCHAR,
  channel      VARCHAR,
  status       VARCHAR,
  satisfaction INT,
  created_at   TIMESTAMP WITH TIME ZONE
)
STORED AS JSON
LOCATION '${sources}/support_tickets.ndjson';

-- The product catalog and the store list.
CREATE EXTERNAL TABLE products (
  sku      VARCHAR NOT NULL,
  name     VARCHAR,
  category VARCHAR,
  brand    VARCHAR,
  price    DECIMAL(12, 2)
)
STORED AS CSV
LOCATION '${sources}/products.csv'
OPTIONS ('format.has_header' 'true');

CREATE EXTERNAL TABLE stores (
  store_id      VARCHAR NOT NULL,
  name          VARCHAR,
  city          VARCHAR,
  postcode      VARCHAR,
  latitude      DOUBLE,
  longitude     DOUBLE,
  opening_hours VARCHAR
)
STORED AS CSV
LOCATION '${sources}/stores.csv'
OPTIONS ('format.has_header' 'true');
