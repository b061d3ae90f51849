-- ModelRoute for nginx: the PostgreSQL store, schema version 1.
--
-- Applied by tools/pg-migrate (./build.sh pg-migrate CONNINFO), in one
-- transaction, which records the version in mr_schema.  The module refuses
-- a database whose schema is older or newer than the one it was built for.
--
-- Money is bigint micro-dollars; times are bigint milliseconds since the
-- epoch (as the module keeps them); the JSON parts of an execution, an
-- endpoint and a delivery are the exact text the API renders ('' for
-- none).  Every ledger change is made in the transaction of the state
-- change that causes it, by the module's rules (mr_rules*.c): the tables
-- hold what they decide, and the indexes below are what the store looks
-- up by.

-- A batch of creates reads its accounts without a lock and changes them
-- by deltas at its end, if they still allow it (mr_store_pg_sql.c); when
-- one does not (another batch took the balance or the room meanwhile, or
-- the same idempotency key), its statement fails here, the transaction
-- is rolled back and the module makes the batch again with its accounts
-- locked first.  The server logs that ERROR; it is expected under
-- contention and needs nothing done.
CREATE FUNCTION mr_conflict(ok boolean) RETURNS integer
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT ok THEN
        RAISE EXCEPTION USING ERRCODE = 'MR001',
            MESSAGE = 'modelroute: a batch of creates lost a race for an '
                      'account or an idempotency key; the module makes it '
                      'again (nothing to do)';
    END IF;
    RETURN 1;
END
$$;

CREATE TABLE mr_meta (
    name            text PRIMARY KEY,
    value           bytea NOT NULL
);

-- an account, its ledger, its use and limits (-1: the default), and its
-- rate-limit override (NULL: none)
CREATE TABLE mr_accounts (
    org             text PRIMARY KEY,
    name            text NOT NULL DEFAULT '',
    balance         bigint NOT NULL,
    held            bigint NOT NULL DEFAULT 0,
    credited        bigint NOT NULL DEFAULT 0,
    debited         bigint NOT NULL DEFAULT 0,
    charged         bigint NOT NULL DEFAULT 0,
    created_ms      bigint NOT NULL,
    used_bytes      bigint NOT NULL DEFAULT 0,
    used_executions bigint NOT NULL DEFAULT 0,
    used_endpoints  bigint NOT NULL DEFAULT 0,
    used_keys       bigint NOT NULL DEFAULT 0,
    limit_bytes     bigint NOT NULL DEFAULT -1,
    limit_executions bigint NOT NULL DEFAULT -1,
    limit_endpoints bigint NOT NULL DEFAULT -1,
    limit_keys      bigint NOT NULL DEFAULT -1,
    rl_requests     bigint,
    CHECK (held >= 0 AND held <= balance)
);

-- credit references: the same reference never credits twice
CREATE TABLE mr_credit_refs (
    org             text NOT NULL,
    ref             text NOT NULL,
    amount          bigint NOT NULL,
    PRIMARY KEY (org, ref)
);

-- API keys: only the SHA-256 of a secret; end_ms: when a revoked or
-- rotated key ended (NULL: active), for the retention
CREATE TABLE mr_keys (
    key_id          text PRIMARY KEY,
    org             text NOT NULL,
    hash            bytea NOT NULL UNIQUE,
    hint            text NOT NULL,
    permission      smallint NOT NULL,
    revoked         boolean NOT NULL DEFAULT false,
    created_ms      bigint NOT NULL,
    valid_until_ms  bigint NOT NULL DEFAULT 0,
    end_ms          bigint,
    name            text NOT NULL DEFAULT ''
);
CREATE INDEX mr_keys_org ON mr_keys (org, key_id);
CREATE INDEX mr_keys_end ON mr_keys (end_ms) WHERE end_ms IS NOT NULL;

-- executions; next_ms: due for dispatch (NULL: not); lease_owner: the
-- token of the attempt in flight (0: none), lease_node: the node that
-- holds it; last_dlv: its last delivery's id (ids of one execution's
-- deliveries sort in the order they were made)
CREATE TABLE mr_executions (
    id              text PRIMARY KEY,
    org             text NOT NULL,
    status          smallint NOT NULL,
    estimate        bigint NOT NULL,
    hold            bigint NOT NULL,
    cost            bigint NOT NULL,
    created_ms      bigint NOT NULL,
    expires_ms      bigint NOT NULL,
    started_ms      bigint NOT NULL DEFAULT 0,
    completed_ms    bigint NOT NULL DEFAULT 0,
    lease_until_ms  bigint NOT NULL DEFAULT 0,
    lease_owner     bigint NOT NULL DEFAULT 0,
    lease_node      text,
    next_ms         bigint,
    ord             bigint NOT NULL,
    attempt_ms      bigint NOT NULL DEFAULT 0,
    nattempts       integer NOT NULL DEFAULT 0,
    route           text NOT NULL DEFAULT '',
    fingerprint     bytea NOT NULL,
    model           text NOT NULL,
    idem_key        text NOT NULL DEFAULT '',
    metadata        text NOT NULL DEFAULT '',
    webhook_url     text NOT NULL DEFAULT '',
    input           text NOT NULL DEFAULT '',
    result          text NOT NULL DEFAULT '',
    error           text NOT NULL DEFAULT '',
    attempts        text NOT NULL DEFAULT '',
    last_dlv        text
);
-- an account's executions, newest first (lists, verify)
CREATE INDEX mr_exec_byorg ON mr_executions (org, ord, id);
-- open executions by deadline (the sweeper's expiry)
CREATE INDEX mr_exec_due ON mr_executions (expires_ms) WHERE status < 4;
-- due for dispatch (claims)
CREATE INDEX mr_exec_disp ON mr_executions (next_ms) WHERE next_ms IS NOT NULL;
-- terminal executions by age (retention)
CREATE INDEX mr_exec_ended ON mr_executions (created_ms) WHERE status >= 4;

-- idempotency keys: one execution per (account, key) while it binds
CREATE TABLE mr_idem (
    org             text NOT NULL,
    key             text NOT NULL,
    exec_id         text NOT NULL,
    created_ms      bigint NOT NULL,
    PRIMARY KEY (org, key)
);
CREATE INDEX mr_idem_age ON mr_idem (created_ms);

-- routes: the breaker and the attempts in flight, for every node
CREATE TABLE mr_routes (
    name            text PRIMARY KEY,
    inflight        integer NOT NULL DEFAULT 0,
    failures        integer NOT NULL DEFAULT 0,
    open_until_ms   bigint NOT NULL DEFAULT 0,
    probe_until_ms  bigint NOT NULL DEFAULT 0,
    paused_until_ms bigint NOT NULL DEFAULT 0,
    attempts        bigint NOT NULL DEFAULT 0,
    failed          bigint NOT NULL DEFAULT 0,
    probe_token     bigint NOT NULL DEFAULT 0,
    -- the failures since the breaker last closed or opened: the
    -- provider's own, and the accounts whose attempts timed out (0, 1, 2
    -- for two or more), the first of them in timeout_org
    provider_failures integer NOT NULL DEFAULT 0,
    timeout_accounts integer NOT NULL DEFAULT 0,
    timeout_org     text NOT NULL DEFAULT ''
);

-- webhook endpoints, and each account's default secret
CREATE TABLE mr_endpoints (
    id              text PRIMARY KEY,
    org             text NOT NULL,
    active          boolean NOT NULL DEFAULT true,
    failures        integer NOT NULL DEFAULT 0,
    created_ms      bigint NOT NULL,
    last_success_ms bigint NOT NULL DEFAULT 0,
    url             text NOT NULL,
    description     text NOT NULL DEFAULT '',
    events          text NOT NULL DEFAULT '',
    headers         text NOT NULL DEFAULT '',
    secret          text NOT NULL
);
CREATE INDEX mr_endpoints_org ON mr_endpoints (org, id);

CREATE TABLE mr_whsecrets (
    org             text PRIMARY KEY,
    secret          text NOT NULL
);

-- events (their ids sort by creation time) and their deliveries; due_ms:
-- in the queue of its account and target (NULL: not queued); token: the
-- lease of the attempt in flight, lease_node: the node that holds it
CREATE TABLE mr_events (
    id              text PRIMARY KEY,
    org             text NOT NULL,
    body            text NOT NULL
);

CREATE TABLE mr_deliveries (
    id              text PRIMARY KEY,
    event_id        text NOT NULL,
    wh_id           text,
    org             text NOT NULL,
    exec_id         text,
    target          text NOT NULL,
    status          smallint NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    created_ms      bigint NOT NULL,
    due_ms          bigint,
    next_ms         bigint NOT NULL DEFAULT 0,
    token           bigint NOT NULL DEFAULT 0,
    lease_node      text,
    url             text NOT NULL DEFAULT '',
    type            text NOT NULL,
    attempt_log     text NOT NULL DEFAULT '[]'
);
-- the queues: by account and target, by due time (fair claims)
CREATE INDEX mr_dlv_queue ON mr_deliveries (org, target, due_ms)
    WHERE due_ms IS NOT NULL;
-- an endpoint's and an execution's deliveries, newest first
CREATE INDEX mr_dlv_wh ON mr_deliveries (wh_id, id) WHERE wh_id IS NOT NULL;
CREATE INDEX mr_dlv_exec ON mr_deliveries (exec_id, id)
    WHERE exec_id IS NOT NULL;
-- the retention: finished ones, oldest first (never a walk over the
-- pending ones)
CREATE INDEX mr_dlv_ended ON mr_deliveries (id) WHERE status <> 1;

-- the health answer's heartbeat, and the like
CREATE TABLE mr_ops (
    name            text PRIMARY KEY,
    value           bigint NOT NULL
);

-- the batches committed: one whose COMMIT got no answer (the connection
-- dropped) is looked up here by its id after reconnecting
CREATE TABLE mr_batches (
    id              uuid PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX mr_batches_at ON mr_batches (at);
