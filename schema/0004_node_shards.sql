-- The default-group shards each node holds, as a comma-separated list of shard numbers: other
-- nodes read it to send batched relays straight to a shard's node (see src/cluster/ShardRoutes.ts).
ALTER TABLE quickim_nodes ADD COLUMN IF NOT EXISTS shard_ids text NOT NULL DEFAULT '';
