// Smoke: a few virtual users for a short time; fails on any error. `make load-test` runs it.
import { mixedRequest } from './lib.js';

export const options = {
  vus: 4,
  duration: __ENV.DURATION || '15s',
  thresholds: {
    checks: ['rate==1.0'],
    http_req_duration: ['p(99)<100'],
    'http_req_failed{route:echo}': ['rate==0'],
  },
};

export default function () {
  mixedRequest();
}
