-- wrk script for bench/run.sh. Scenario from BENCH_SCENARIO:
--   metric     valid /log_raw_metric, metric_name varies per request
--   analytics  valid /log_raw_analytics with a ~300-byte nested "data"
--   batch100   /log_raw_metric/batch with 100 items
--   invalid    /log_raw_metric with metric_name "" (422)
--   noauth     valid /log_raw_metric body without Authorization (401)
-- Every 200's ids are collected and written to BENCH_IDS (one per line) in done(), so
-- run.sh can check that each of them is in the table.
-- done() prints: RESULT,rps,p50_ms,p99_ms,ok_responses,requests,socket_errors
local scenario = os.getenv("BENCH_SCENARIO") or "metric"
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local data = '{"page":"/build","referrer":"/marketplace/agent/42",'
  .. '"session":{"id":"b7e2c9d4-5a61-4f3e-9c8b-1d2e3f4a5b6c","step":3,'
  .. '"started_at":"2026-11-22T10:15:30Z"},"viewport":{"w":1920,"h":1080,"dpr":2},'
  .. '"tags":["onboarding","tutorial","builder"],"flags":{"beta":true,"dark_mode":false},'
  .. '"durations_ms":[120,87,342,15]}'

local function batch_body(n)
  local items = {}
  for i = 1, n do
    items[i] = string.format(
      '{"metric_name":"bench_batch_%d","metric_value":%d.5,"data_string":"/build/%d"}', i, i, i)
  end
  return "[" .. table.concat(items, ",") .. "]"
end

local bodies = {
  analytics = '{"type":"tutorial_step","data":' .. data .. ',"data_index":"3"}',
  batch100 = batch_body(100),
  invalid = '{"metric_name":"","metric_value":1.0,"data_string":"/build"}',
  noauth = '{"metric_name":"page_view","metric_value":1.0,"data_string":"/build"}',
}

local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

ids = {}
ok = 0
local n = 0

if scenario == "metric" then
  function request()
    n = n + 1
    local body = string.format(
      '{"metric_name":"bench_metric_%d_%d","metric_value":%d.25,"data_string":"/build/%d"}',
      tid or 0, n % 1000, n % 97, n)
    return wrk.format(nil, nil, nil, body)
  end
else
  wrk.body = assert(bodies[scenario], "unknown BENCH_SCENARIO " .. scenario)
end

function response(status, headers, body)
  if status == 200 then
    ok = ok + 1
    if body:sub(1, 1) == '"' then
      ids[#ids + 1] = body:sub(2, -2)
    else
      for id in body:gmatch('"id":"([^"]+)"') do ids[#ids + 1] = id end
    end
  end
end

function done(summary, latency, _)
  local total_ok = 0
  local out = assert(io.open(os.getenv("BENCH_IDS") or "/dev/null", "w"))
  for _, thread in ipairs(threads) do
    total_ok = total_ok + thread:get("ok")
    for _, id in ipairs(thread:get("ids")) do out:write(id, "\n") end
  end
  out:close()
  local e = summary.errors
  io.write(string.format("RESULT,%.1f,%.2f,%.2f,%d,%d,%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, total_ok, summary.requests,
    e.connect + e.read + e.write + e.timeout))
end
