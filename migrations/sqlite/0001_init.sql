-- The same tables and columns as migrations/postgres/0001_init.sql; "data" is JSON text
-- and timestamps are sqlx's text form of a UTC date-time with milliseconds.
create table if not exists "AnalyticsMetrics" (
    "id" text not null primary key,
    "createdAt" datetime not null,
    "updatedAt" datetime not null,
    "analyticMetric" text not null,
    "value" real not null,
    "dataString" text,
    "userId" text not null
);

create table if not exists "AnalyticsDetails" (
    "id" text not null primary key,
    "createdAt" datetime not null,
    "updatedAt" datetime not null,
    "userId" text not null,
    "type" text not null,
    "data" text,
    "dataIndex" text
);

create index if not exists "AnalyticsDetails_userId_type_dataIndex_idx"
    on "AnalyticsDetails" ("userId", "type", "dataIndex");
