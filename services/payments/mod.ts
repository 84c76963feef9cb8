export { createPayments, DECLINED_TEST_CARD, type PaymentsOptions } from "./payments.ts";
export { paymentsSetup } from "./main.ts";
