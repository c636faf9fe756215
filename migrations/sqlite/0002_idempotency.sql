-- The same table as migrations/postgres/0002_idempotency.sql.
create table if not exists analytics_idempotency_keys (
    user_id text not null,
    endpoint text not null,
    idempotency_key text not null,
    body_hash text not null,
    row_id text not null,
    created_at datetime not null,
    primary key (user_id, endpoint, idempotency_key)
);

create index if not exists analytics_idempotency_keys_created_at_idx
    on analytics_idempotency_keys (created_at);
