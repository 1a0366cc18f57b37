-- Each running node's self-report, refreshed every few seconds; read by GET /inner/cluster.
-- Rows of nodes that stopped reporting are shown as stale and deleted by the retention job.
CREATE TABLE IF NOT EXISTS quickim_nodes (
  node_id text PRIMARY KEY,
  runner_address text,
  http_url text NOT NULL,
  started_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  shards integer NOT NULL DEFAULT 0,
  conversations integer NOT NULL DEFAULT 0,
  mailboxes integer NOT NULL DEFAULT 0,
  ws integer NOT NULL DEFAULT 0,
  sse integer NOT NULL DEFAULT 0,
  poll integer NOT NULL DEFAULT 0
);
