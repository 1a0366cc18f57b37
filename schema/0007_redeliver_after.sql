-- A conversation that stopped with hand-overs outstanding (its shard moved, or was released under
-- it) records here the last MsgId up to which every member was handed everything. Its next host
-- hands over everything after it before anything new, however old, and the next commit clears it.
ALTER TABLE conversations ADD COLUMN redeliver_after text;
