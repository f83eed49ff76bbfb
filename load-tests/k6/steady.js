// Steady: a fixed arrival rate for several minutes (no coordinated omission: k6 starts
// requests on schedule whether or not earlier ones finished).
import { mixedRequest } from './lib.js';

export const options = {
  scenarios: {
    steady: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.RATE || 2000),
      timeUnit: '1s',
      duration: __ENV.DURATION || '5m',
      preAllocatedVUs: 64,
      maxVUs: 512,
    },
  },
  thresholds: {
    checks: ['rate>0.999'],
    http_req_duration: ['p(99)<50', 'p(99.9)<200'],
    dropped_iterations: ['count<10'],
  },
};

export default function () {
  mixedRequest();
}
