-- Identity resolution: which identifiers each source record carries, normalized, and the
-- graph that stitches them into one profile per person.

-- One row per (record, identifier). Record keys say where a record came from, so that
-- profiles can be joined back to every source.
CREATE VIEW identifiers AS
-- Web and app: the device always, the shop account once logged in, and what identify
-- calls tell about the person.
SELECT 'web:' || message_id AS record_key, 'anonymous_id' AS id_type, anonymous_id AS id_value, "timestamp" AS seen_at
FROM events WHERE anonymous_id IS NOT NULL
UNION ALL
SELECT 'web:' || message_id, 'user_id', user_id, "timestamp"
FROM events WHERE user_id IS NOT NULL
UNION ALL
SELECT 'web:' || message_id, 'email', normalize_email(traits ->> 'email'), "timestamp"
FROM events WHERE type = 'identify'
UNION ALL
SELECT 'web:' || message_id, 'phone', normalize_phone(traits ->> 'phone', 'FR'), "timestamp"
FROM events WHERE type = 'identify'
-- Store tills: the loyalty card when shown, the e-mail when the cashier typed one.
UNION ALL
SELECT 'pos:' || sale_id, 'loyalty_card', normalize_id(loyalty_card), sold_at FROM pos_sales
UNION ALL
SELECT 'pos:' || sale_id, 'email', normalize_email(email), sold_at FROM pos_sales
-- CRM contacts know the most: account, e-mail, phone and card.
UNION ALL
SELECT 'crm:' || contact_id, 'user_id', customer_id, created_at FROM crm_contacts
UNION ALL
SELECT 'crm:' || contact_id, 'email', normalize_email(email), created_at FROM crm_contacts
UNION ALL
SELECT 'crm:' || contact_id, 'phone', normalize_phone(phone, 'FR'), created_at FROM crm_contacts
UNION ALL
SELECT 'crm:' || contact_id, 'loyalty_card', normalize_id(loyalty_card), created_at FROM crm_contacts
-- Support tickets come from an e-mail or a phone.
UNION ALL
SELECT 'support:' || ticket_id, 'email', normalize_email(email), created_at FROM support_tickets
UNION ALL
SELECT 'support:' || ticket_id, 'phone', normalize_phone(phone, 'FR'), created_at FROM support_tickets;

-- The graph: one shop account per person, a few e-mails and phones, known junk blocked,
-- and anything shared by too many people (a family tablet, a till's default e-mail) treated
-- as a hub that links nothing.
CREATE IDENTITY GRAPH customers FROM identifiers WITH (
  priority      = 'user_id, email, phone, loyalty_card, anonymous_id',
  limits        = 'user_id: 1, email: 3, phone: 3, loyalty_card: 2',
  blocked       = '^(test@test\.com|noemail@.*|n/?a@.*)$',
  hub_threshold = 10
) EVERY '5 minutes';
