//! The state database's schema: the tables keyward creates and upgrades itself, one step per
//! version.

/// The schema, one step per version; a database at version N has had steps 1..=N applied.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: the shared ChatGPT login, sealed with the key from --state-key-file.
    "CREATE TABLE keyward_login (
        id smallint PRIMARY KEY CHECK (id = 1),
        sealed bytea NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    )",
    // 2: client tokens (`keyward token --state`): names and SHA-256 hashes, never tokens.
    "CREATE TABLE keyward_clients (
        name text PRIMARY KEY,
        sha256 text NOT NULL,
        created bigint NOT NULL
    )",
    // 3: the usage ledger: the JSONL line's fields, the replica, and an id unique per replica
    // that makes sending a row again harmless.
    "CREATE TABLE keyward_usage (
        replica text NOT NULL,
        id text NOT NULL,
        time timestamptz NOT NULL,
        client text NOT NULL,
        endpoint text NOT NULL,
        model text,
        status smallint NOT NULL,
        upstream_status smallint,
        end_cause text NOT NULL,
        input_tokens bigint NOT NULL,
        cached_input_tokens bigint NOT NULL,
        output_tokens bigint NOT NULL,
        reasoning_tokens bigint NOT NULL,
        estimated boolean NOT NULL,
        duration_ms double precision NOT NULL,
        ttfb_ms double precision,
        request_id text,
        PRIMARY KEY (replica, id)
    );
    CREATE INDEX keyward_usage_time ON keyward_usage USING brin (time)",
    // 4: quota counts, per running keyward (`instance`): tokens per minute, and what is in
    // flight and was admitted in the last minute as of `seen`.
    "CREATE TABLE keyward_quota_tokens (
        instance text NOT NULL,
        client text NOT NULL,
        minute bigint NOT NULL,
        tokens bigint NOT NULL,
        PRIMARY KEY (instance, client, minute)
    );
    CREATE TABLE keyward_quota_live (
        instance text NOT NULL,
        client text NOT NULL,
        active integer NOT NULL,
        recent integer NOT NULL,
        seen timestamptz NOT NULL,
        PRIMARY KEY (instance, client)
    )",
    // 5: who created each stored response (128-bit hashes of the ids, never the ids), and
    // whether its usage was charged; `seq` grows with every change, for the replicas' polls.
    "CREATE SEQUENCE keyward_owners_seq;
    CREATE TABLE keyward_owners (
        hash bytea PRIMARY KEY,
        client text NOT NULL,
        at bigint NOT NULL,
        billed boolean NOT NULL,
        seq bigint NOT NULL DEFAULT nextval('keyward_owners_seq')
    );
    CREATE INDEX keyward_owners_by_seq ON keyward_owners (seq)",
    // 6: several logins (`keyward login --name`), by name; the one there was is `default`.
    "ALTER TABLE keyward_login ADD COLUMN name text NOT NULL DEFAULT 'default';
    ALTER TABLE keyward_login DROP COLUMN id;
    ALTER TABLE keyward_login ADD PRIMARY KEY (name)",
    // 7: the credential each ledger row was sent with (none on older rows).
    "ALTER TABLE keyward_usage ADD COLUMN credential text",
    // 8: client tokens' groups (`keyward token add --group`), for routes that name `@GROUP`.
    "ALTER TABLE keyward_clients ADD COLUMN groups text[] NOT NULL DEFAULT '{}'",
];
