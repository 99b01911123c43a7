-- wrk driver for bench/run.py: replays a request list, optionally tracks ETags for PUTs, optionally
-- paces requests, and prints the results as one JSON line that run.py parses.
--
-- Environment (set by run.py):
--   BENCH_REQUESTS  file, one request per line: METHOD <TAB> PATH <TAB> Header: value|Header: value
--   BENCH_THREADS   wrk -t value (each thread takes every n-th line, so PUT targets never overlap)
--   BENCH_MODE      "replay" (default) or "put": send the body with If-Match = the newest ETag seen
--                   for that path (from the request list first, then from each 201's ETag header)
--   BENCH_BODY      file with the PUT body; "@N@" in it is replaced by a fresh counter each time
--   BENCH_DELAY_MS  mean pause (ms) before each request on a connection; uniform in [0, 2*mean]

local counter = 0
local threads = {}

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local function split(text, sep)
  local out = {}
  for piece in (text .. sep):gmatch("(.-)" .. sep) do table.insert(out, piece) end
  return out
end

function init(args)
  local nthreads = tonumber(os.getenv("BENCH_THREADS") or "1")
  mode = os.getenv("BENCH_MODE") or "replay"
  delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
  reqs, etags, index, sent = {}, {}, 0, 0
  local n = 0
  for line in io.lines(os.getenv("BENCH_REQUESTS")) do
    if line ~= "" then
      n = n + 1
      if mode ~= "put" or (n - 1) % nthreads == tid then
        local cols = split(line, "\t")
        local headers = {}
        if cols[3] and cols[3] ~= "" then
          for _, h in ipairs(split(cols[3], "|")) do
            local name, value = h:match("^([^:]+):%s*(.*)$")
            headers[name] = value
          end
        end
        local r = {method = cols[1], path = cols[2], headers = headers}
        if mode == "put" then
          etags[r.path] = headers["If-Match"]
        else
          r.raw = wrk.format(r.method, r.path, headers)
        end
        table.insert(reqs, r)
      end
    end
  end
  if mode == "put" then
    local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
    body = f:read("*a")
    f:close()
  end
  index = (tid * 7919) % #reqs  -- threads start at different places in the list
end

function request()
  index = index % #reqs + 1
  local r = reqs[index]
  if mode ~= "put" then return r.raw end
  sent = sent + 1
  r.headers["If-Match"] = etags[r.path]
  return wrk.format(r.method, r.path, r.headers, (body:gsub("@N@", tid .. "-" .. sent)))
end

if os.getenv("BENCH_MODE") == "put" then
  function response(status, headers, _)
    if status == 201 then
      local location = headers["Location"] or headers["location"]
      local path = location and location:match("(/v1/protocols/[^/]+)/versions/")
      if path then etags[path] = headers["ETag"] or headers["etag"] end
    end
  end
end

if tonumber(os.getenv("BENCH_DELAY_MS") or "0") > 0 then
  function delay()
    return math.random(0, 2 * delay_ms)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"mean":%.1f,"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
