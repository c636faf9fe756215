-- Idempotency keys of the analytics endpoints, in a table of our own so the original's
-- tables stay as Prisma made them. The primary key makes the database decide a race:
-- one request claims (user, endpoint, key), every concurrent replay finds that claim.
create table if not exists analytics_idempotency_keys (
    user_id text not null,
    endpoint text not null,
    idempotency_key text not null,
    body_hash text not null,
    row_id text not null,
    created_at timestamp(3) not null,
    constraint analytics_idempotency_keys_pkey primary key (user_id, endpoint, idempotency_key)
);

-- Pruning deletes by age.
create index if not exists analytics_idempotency_keys_created_at_idx
    on analytics_idempotency_keys (created_at);
