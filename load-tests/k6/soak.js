// Soak: a moderate rate for hours, to find leaks (watch RSS and file descriptors alongside).
import { mixedRequest } from './lib.js';

export const options = {
  scenarios: {
    soak: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.RATE || 1000),
      timeUnit: '1s',
      duration: __ENV.DURATION || '2h',
      preAllocatedVUs: 64,
      maxVUs: 256,
    },
  },
  thresholds: {
    checks: ['rate>0.9999'],
    http_req_duration: ['p(99)<50'],
  },
};

export default function () {
  mixedRequest();
}
