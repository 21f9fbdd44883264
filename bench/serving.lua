-- wrk script of bench/serving.py: POSTs decision-request JSON bodies, rotating the user id over
-- BENCH_USERS users ("user-0" … ), consent true so the server reads each user's history.
-- Counts responses whose body lacks BENCH_EXPECT (a decision without a creative), and prints
-- one JSON line of results at the end for bench/serving.py to parse.
--
--   BENCH_PATH=/v1/decisions BENCH_USERS=5000 BENCH_PLACEMENT=bench-slot \
--   BENCH_EXPECT='"creative":{' wrk -t1 -c32 -d15s -s bench/serving.lua http://127.0.0.1:8100

local path = os.getenv("BENCH_PATH") or "/v1/decisions"
local users = tonumber(os.getenv("BENCH_USERS") or "1000")
local placement = os.getenv("BENCH_PLACEMENT") or "bench-slot"
local expect = os.getenv("BENCH_EXPECT") or '"creative":{'
local headers = { ["Content-Type"] = "application/json" }

local threads = {}

function setup(thread)
   thread:set("id", #threads)
   table.insert(threads, thread)
end

function init(args)
   counter = id * 7919
   missing = 0
   non2xx = 0
   responses = 0
end

local categories = { "shoes", "electronics", "garden", "books", "toys" }

function request()
   counter = counter + 1
   local user = counter % users
   local category = categories[(counter % #categories) + 1]
   local body = '{"user_id":"user-' .. user .. '","placements":["' .. placement .. '"],"consent":true,'
      .. '"context":{"page_url":"https://shop.example/c/' .. category .. '?page=2","page_category":"'
      .. category .. '","keywords":["sale","running","new"],"device":"desktop","geo":"FR",'
      .. '"referrer":"https://search.example/?q=' .. category .. '"}}'
   return wrk.format("POST", path, headers, body)
end

function response(status, headers, body)
   responses = responses + 1
   if status < 200 or status > 299 then
      non2xx = non2xx + 1
   elseif not string.find(body, expect, 1, true) then
      missing = missing + 1
   end
end

function done(summary, latency, requests)
   local missing_total, non2xx_total, responses_total = 0, 0, 0
   for _, thread in ipairs(threads) do
      missing_total = missing_total + thread:get("missing")
      non2xx_total = non2xx_total + thread:get("non2xx")
      responses_total = responses_total + thread:get("responses")
   end
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,"read_errors":%d,'
         .. '"write_errors":%d,"status_errors":%d,"timeouts":%d,"non2xx":%d,"missing":%d,"responses":%d,'
         .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
      summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
      non2xx_total, missing_total, responses_total, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.max, latency.mean))
end
