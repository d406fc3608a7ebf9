-- Sends pre-signed, distinct requests from a file ("<signature>\t<body>" per line), each
-- wrk thread its own share, and counts answers by status.
local file_name = os.getenv("BENCH_REQUESTS")
local path = os.getenv("BENCH_PATH") or "/callbacks/bulk"
local header = os.getenv("BENCH_HEADER") or "Elements-Webhook-Signature"
local threads = {}
local counter = 1

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local lines = {}
  local n = 0
  for line in io.lines(file_name) do
    n = n + 1
    if n % tonumber(os.getenv("BENCH_THREADS") or "2") == (id - 1) then
      local tab = line:find("\t", 1, true)
      table.insert(lines, {line:sub(1, tab - 1), line:sub(tab + 1)})
    end
  end
  requests_list = lines
  position = 0
  accepted, duplicate, other = 0, 0, 0
end

function request()
  position = position + 1
  local entry = requests_list[(position - 1) % #requests_list + 1]
  local headers = {}
  headers[header] = entry[1]
  headers["Content-Type"] = "application/json"
  return wrk.format("POST", path, headers, entry[2])
end

function response(status, headers, body)
  if status == 202 or (status == 200 and body == "") then
    accepted = accepted + 1
  elseif status == 200 then
    duplicate = duplicate + 1
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local a, d, o = 0, 0, 0
  for _, thread in ipairs(threads) do
    a = a + thread:get("accepted")
    d = d + thread:get("duplicate")
    o = o + thread:get("other")
  end
  io.write(string.format("BENCH accepted=%d duplicate=%d other=%d errors=%d p50=%f p99=%f seconds=%f\n",
    a, d, o, summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.status + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, summary.duration / 1e6))
end
