-- Where each (session, platform) long-poll client stands, kept by its Mailbox entity so a poll
-- without a cursor continues after a restart or passivation.
CREATE TABLE poll_positions (
  session_id  text NOT NULL,
  platform    integer NOT NULL,
  last_msg_id text COLLATE "C" NOT NULL,
  updated_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (session_id, platform)
);
