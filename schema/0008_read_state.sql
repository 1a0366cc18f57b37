-- Read state (docs/api.md, "Read state"): each member's read position, a conversation's name and
-- extra data, and what the inbox sorts and pages by.

-- A member's read position: the seq of the last message it has read (0: none) and that message's id.
-- Sending moves the sender's position to its message, in the same statement that stores it, so a
-- member's own messages are never above its position: its unread count is last_seq - read_seq.
ALTER TABLE conversation_members ADD COLUMN read_seq bigint NOT NULL DEFAULT 0;
ALTER TABLE conversation_members ADD COLUMN read_msg_id text COLLATE "C";

-- Existing members have read everything so far: no flood of old unread messages after the upgrade.
UPDATE conversation_members m SET read_seq = c.last_seq, read_msg_id = c.last_msg_id
  FROM conversations c WHERE c.id = m.conversation_id;

-- The transaction that added the membership: an inbox page after the first leaves out memberships
-- its first page could not see.
ALTER TABLE conversation_members ADD COLUMN joined_xid xid8 NOT NULL DEFAULT pg_current_xact_id();

-- get_conversation_members: a conversation's members in join order.
CREATE INDEX conversation_members_by_join ON conversation_members (conversation_id, joined_at, session_id);

ALTER TABLE conversations ADD COLUMN name text NOT NULL DEFAULT '';
ALTER TABLE conversations ADD COLUMN extra text NOT NULL DEFAULT '';
-- When the last message was sent (its SendTime), and the transaction that stored it: the inbox
-- sorts by the first, and pages after the first sort as their first page saw the conversations.
ALTER TABLE conversations ADD COLUMN last_msg_at timestamptz;
ALTER TABLE conversations ADD COLUMN last_xid xid8;
UPDATE conversations SET last_msg_at = last_send_time::timestamptz WHERE last_send_time IS NOT NULL;

-- The transaction that stored each message (see last_xid); older messages count as seen by every page.
ALTER TABLE messages ADD COLUMN txid xid8;
ALTER TABLE messages ALTER COLUMN txid SET DEFAULT pg_current_xact_id();
