-- The original's tables, as Prisma created them in AutoGPT's database, so the same
-- database works with either service. "if not exists" lets the service run its
-- migrations against a database whose tables Prisma already made. AutoGPT's
-- "userId" foreign keys to "User" are deliberately not created here.
create table if not exists "AnalyticsMetrics" (
    "id" text not null,
    "createdAt" timestamp(3) not null,
    "updatedAt" timestamp(3) not null,
    "analyticMetric" text not null,
    "value" double precision not null,
    "dataString" text,
    "userId" text not null,
    constraint "AnalyticsMetrics_pkey" primary key ("id")
);

create table if not exists "AnalyticsDetails" (
    "id" text not null,
    "createdAt" timestamp(3) not null,
    "updatedAt" timestamp(3) not null,
    "userId" text not null,
    "type" text not null,
    "data" jsonb,
    "dataIndex" text,
    constraint "AnalyticsDetails_pkey" primary key ("id")
);

create index if not exists "AnalyticsDetails_userId_type_dataIndex_idx"
    on "AnalyticsDetails" ("userId", "type", "dataIndex");
