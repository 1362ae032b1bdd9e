// The original load test, re-created: an open model (constant-arrival-rate) of issue
// requests, each from a new user, against one event. Every setting comes from the
// environment (defaults: the original scenario, 2,800 req/s for 60 s, up to 3,000 VUs):
//   BASE_URL, EVENT_ID (required), RATE, DURATION, PRE_VUS, MAX_VUS, QUANTITY (for the
//   report), USER_PREFIX, P99_MS (p99 bound of the constant scenario), SCENARIO=spike
//   (SPIKE_VUS fire one request each at the same instant, the flash-sale opening),
//   READ_RATE (a stampede of sale-page readers: GET /events/{id} at this rate beside the
//   issues, to show reads do not slow issuing; 0, the default, reads nothing).
// Answers 201, 409 and 410 are correct; anything else, or a failed request, fails the run.
import http from 'k6/http';
import exec from 'k6/execution';
import { Counter } from 'k6/metrics';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8000';
const EVENT_ID = __ENV.EVENT_ID;
const RATE = parseInt(__ENV.RATE || '2800', 10);
const DURATION = __ENV.DURATION || '60s';
const PRE_VUS = parseInt(__ENV.PRE_VUS || '200', 10);
const MAX_VUS = parseInt(__ENV.MAX_VUS || '3000', 10);
const SPIKE_VUS = parseInt(__ENV.SPIKE_VUS || '3000', 10);
const P99_MS = parseFloat(__ENV.P99_MS || '25');
const USER_PREFIX = __ENV.USER_PREFIX || `k6-${Date.now()}`;
const READ_RATE = parseInt(__ENV.READ_RATE || '0', 10);

if (!EVENT_ID) {
  throw new Error('EVENT_ID is required (make loadtest creates and opens an event)');
}

const issued = new Counter('issued');
const soldOut = new Counter('sold_out');
const duplicate = new Counter('duplicate');
const other = new Counter('other');

const scenarios = {
  constant: {
    executor: 'constant-arrival-rate',
    rate: RATE,
    timeUnit: '1s',
    duration: DURATION,
    preAllocatedVUs: PRE_VUS,
    maxVUs: MAX_VUS,
  },
  spike: {
    executor: 'per-vu-iterations',
    vus: SPIKE_VUS,
    iterations: 1,
    maxDuration: '60s',
  },
};
const scenarioName = __ENV.SCENARIO === 'spike' ? 'spike' : 'constant';

const chosen = { [scenarioName]: scenarios[scenarioName] };
if (READ_RATE > 0 && scenarioName === 'constant') {
  chosen.readers = {
    executor: 'constant-arrival-rate',
    rate: READ_RATE,
    timeUnit: '1s',
    duration: DURATION,
    preAllocatedVUs: PRE_VUS,
    maxVUs: MAX_VUS,
    exec: 'read',
  };
}

// The spike gates on answers only: its latency is recorded, not bounded. The issue route's
// own figures are kept apart from the readers' (a threshold makes k6 export them).
const thresholds = {
  http_req_failed: ['rate==0'],
  other: ['count==0'],
  'http_reqs{name:issue}': ['count>=0'],
  'http_req_duration{name:issue}': scenarioName === 'constant' ? [`p(99)<${P99_MS}`] : ['max>=0'],
  'dropped_iterations{scenario:constant}': ['count>=0'],
};
if (chosen.readers) {
  thresholds['http_reqs{name:event}'] = ['count>=0'];
  thresholds['http_req_duration{name:event}'] = ['max>=0'];
  thresholds['dropped_iterations{scenario:readers}'] = ['count>=0'];
}

export const options = {
  scenarios: chosen,
  thresholds,
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
  discardResponseBodies: true,
  noConnectionReuse: false,
};

// 409 and 410 are correct answers of a sale, not failures.
// A reader's answer is 200.
http.setResponseCallback(http.expectedStatuses(200, 201, 409, 410));

const url = `${BASE_URL}/events/${EVENT_ID}/issue`;
const params = { headers: { 'Content-Type': 'application/json' }, tags: { name: 'issue' } };

export default function () {
  const user = `${USER_PREFIX}-${exec.scenario.iterationInTest}`;
  const res = http.post(url, JSON.stringify({ user_id: user }), params);
  if (res.status === 201) {
    issued.add(1);
  } else if (res.status === 410) {
    soldOut.add(1);
  } else if (res.status === 409) {
    duplicate.add(1);
  } else {
    other.add(1);
  }
}

const eventUrl = `${BASE_URL}/events/${EVENT_ID}`;
const readParams = { tags: { name: 'event' } };

export function read() {
  const res = http.get(eventUrl, readParams);
  if (res.status !== 200) {
    other.add(1);
  }
}
