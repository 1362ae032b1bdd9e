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
  -- The request line and headers are built once per path; each request only adds its
  -- body (wrk.format rebuilt them on every request: generator CPU taken from the service).
  local function head(path)
    return "POST " .. path .. " HTTP/1.1\r\nHost: " .. wrk.headers["Host"] ..
      "\r\nContent-Type: application/json\r\nContent-Length: "
  end
  heads = {}
  for id in string.gmatch(args[2] or "", "%d+") do
    table.insert(heads, head("/events/" .. id .. "/issue"))
  end
  if #heads == 0 then
    table.insert(heads, head(wrk.path))
  end
end

function request()
  counter = counter + 1
  local body = '{"user_id":"' .. prefix .. counter .. '"}'
  return heads[counter % #heads + 1] .. #body .. "\r\n\r\n" .. body
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "non_2xx": %d, "socket_errors": %d, "p50_ms": %.3f, "p99_ms": %.3f}\n',
    summary.requests, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
