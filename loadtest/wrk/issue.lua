-- wrk script: POST /events/{EVENT_ID}/issue with a new user id on every request.
-- Usage: wrk -s loadtest/wrk/issue.lua URL/events/ID/issue -- RUN_TAG [ID,ID,...]
-- With a list of event ids, the requests go round-robin over those events instead.
-- Prints one JSON line at the end: requests, non-2xx answers, socket errors.
local threads = {}
local next_thread = 0

function setup(thread)
  thread:set("thread_id", next_thread)
  next_thread = next_thread + 1
  table.insert(threads, thread)
end

function init(args)
  prefix = (args[1] or "bench") .. "-" .. thread_id .. "-"
  counter = 0
  paths = {}
  for id in string.gmatch(args[2] or "", "%d+") do
    table.insert(paths, "/events/" .. id .. "/issue")
  end
end

function request()
  counter = counter + 1
  local path = nil
  if #paths > 0 then
    path = paths[counter % #paths + 1]
  end
  return wrk.format("POST", path, {["Content-Type"] = "application/json"},
    '{"user_id":"' .. prefix .. counter .. '"}')
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "non_2xx": %d, "socket_errors": %d, "p50_ms": %.3f, "p99_ms": %.3f}\n',
    summary.requests, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
