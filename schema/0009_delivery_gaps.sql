-- Messages a conversation could not hand over to some member in time (dropped for it, and the member
-- told of the gap): the range of their MsgIds and when it was last widened (epoch millis of the
-- writing node). A member's replay normally reaches back the resume window from its last message;
-- one that starts within the gap memory of `gap_at` also reads this range, however old, since the
-- member may have received newer messages of other conversations before it was told of the gap.
-- A table of its own: the conversations row is rewritten by every commit; this one is written only
-- when something was dropped.
CREATE TABLE conversation_gaps (
  conversation_id text PRIMARY KEY,
  gap_from        text COLLATE "C" NOT NULL,
  gap_to          text COLLATE "C" NOT NULL,
  gap_at          bigint NOT NULL
);
