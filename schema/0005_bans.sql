-- Sessions the backend removed from a conversation (inner/kickout_conversation). A banned session
-- cannot come back through the public join_conversation (403 / 90022); inner/join_conversation
-- deletes the row and adds it again. Leaving by oneself records nothing.
CREATE TABLE IF NOT EXISTS conversation_bans (
  conversation_id text NOT NULL REFERENCES conversations (id),
  session_id      text NOT NULL,
  banned_at       timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (conversation_id, session_id)
);
