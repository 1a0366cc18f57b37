-- Conversations, their current members and their messages.
-- MsgIds compare with the "C" collation: byte order is the id order (time order).

CREATE TABLE conversations (
  id                text PRIMARY KEY,
  conversation_type bigint NOT NULL,
  is_archive        boolean NOT NULL DEFAULT false,
  is_delete         boolean NOT NULL DEFAULT false,
  last_msg_id       text COLLATE "C",
  last_send_time    text,
  last_send_session text,
  last_seq          bigint NOT NULL DEFAULT 0,
  created_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE conversation_members (
  conversation_id text NOT NULL REFERENCES conversations (id),
  session_id      text NOT NULL,
  joined_seq      bigint NOT NULL,
  joined_at       timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (conversation_id, session_id)
);

-- get_joined_conversation: a session's conversations in the order it joined them.
CREATE INDEX conversation_members_by_session ON conversation_members (session_id, joined_at, conversation_id);

CREATE TABLE messages (
  conversation_id text NOT NULL,
  msg_id          text COLLATE "C" NOT NULL,
  seq             bigint NOT NULL,
  from_session    text NOT NULL,
  send_time       text NOT NULL,
  status          integer NOT NULL,
  type            integer NOT NULL,
  content         text NOT NULL,
  client_msg_id   text,
  PRIMARY KEY (conversation_id, msg_id)
);

-- Gapless per-conversation sequence; also serves resume by position.
CREATE UNIQUE INDEX messages_by_seq ON messages (conversation_id, seq);

-- Idempotent sends: one row per (conversation, sender, client_msg_id).
CREATE UNIQUE INDEX messages_by_client_id ON messages (conversation_id, from_session, client_msg_id)
  WHERE client_msg_id IS NOT NULL;
