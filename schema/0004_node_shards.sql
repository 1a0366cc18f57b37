-- The default-group shards each node holds, as a comma-separated list of shard numbers: other
-- nodes read it to send batched relays straight to a shard's node (see src/cluster/ShardRoutes.ts).
ALTER TABLE quickim_nodes ADD COLUMN IF NOT EXISTS shard_ids text NOT NULL DEFAULT '';
-- Relays this node sent to others since it started, the entity messages they carried, and those
-- handed back to go as ordinary entity messages (the receiver did not hold the shard, or a relay failed).
ALTER TABLE quickim_nodes ADD COLUMN IF NOT EXISTS relays bigint NOT NULL DEFAULT 0;
ALTER TABLE quickim_nodes ADD COLUMN IF NOT EXISTS relayed bigint NOT NULL DEFAULT 0;
ALTER TABLE quickim_nodes ADD COLUMN IF NOT EXISTS handed_back bigint NOT NULL DEFAULT 0;
