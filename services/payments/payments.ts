/** The payments handlers and in-memory state (bounded). Card numbers are checked and never kept. */
import { create } from "@bufbuild/protobuf";
import { PaymentSchema, PaymentService, PaymentStatus } from "@tailwatch/proto/payments/v1";
import {
  bindService,
  PackedMessages,
  requireCurrency,
  requireId,
  requireRange,
  type ServiceBinding,
} from "@tailwatch/kit";
import { BoundedMap } from "@tailwatch/runtime";
import { Code, ServiceError } from "@tailwatch/grpc";

export interface PaymentsOptions {
  /** Payments remembered; the oldest are forgotten first (then NOT_FOUND). */
  maxPayments: number;
}

/** The test card that is always declined, so failures and compensation can be exercised. */
export const DECLINED_TEST_CARD = "4000000000000002";

function luhnValid(digits: string): boolean {
  let sum = 0;
  for (let i = 0; i < digits.length; i++) {
    let digit = digits.charCodeAt(digits.length - 1 - i) - 48;
    if (i % 2 === 1) {
      digit *= 2;
      if (digit > 9) digit -= 9;
    }
    sum += digit;
  }
  return sum % 10 === 0;
}

function checkCard(cardNumber: string): string {
  const digits = cardNumber.replaceAll(" ", "");
  if (!/^\d{12,19}$/.test(digits)) {
    throw new ServiceError(Code.INVALID_ARGUMENT, "card_number must be 12 to 19 digits");
  }
  if (!luhnValid(digits)) throw new ServiceError(Code.INVALID_ARGUMENT, "card_number fails the Luhn check");
  if (digits === DECLINED_TEST_CARD) throw new ServiceError(Code.FAILED_PRECONDITION, "card declined");
  return digits.slice(-4);
}

export function createPayments(options: PaymentsOptions): ServiceBinding {
  const payments = new PackedMessages(PaymentSchema, options.maxPayments);
  const paymentByOrder = new BoundedMap<string, string>(options.maxPayments);
  const find = (paymentId: string) => {
    const payment = payments.get(requireId("payment_id", paymentId));
    if (!payment) throw new ServiceError(Code.NOT_FOUND, `payment ${paymentId} not found`);
    return payment;
  };

  return bindService(PaymentService, {
    charge(request) {
      const orderId = requireId("order_id", request.orderId);
      const amount = requireRange("amount_cents", request.amountCents, 1, 1_000_000_000);
      const currency = requireCurrency("currency", request.currency);
      const cardLast4 = checkCard(request.cardNumber);
      const earlier = payments.get(paymentByOrder.get(orderId) ?? "");
      if (earlier) {
        if (Number(earlier.amountCents) !== amount || earlier.currency !== currency) {
          throw new ServiceError(
            Code.ALREADY_EXISTS,
            `order ${orderId} was already charged a different amount`,
          );
        }
        return { payment: earlier };
      }
      const payment = create(PaymentSchema, {
        paymentId: `pay-${crypto.randomUUID()}`,
        orderId,
        amountCents: BigInt(amount),
        currency,
        status: PaymentStatus.CAPTURED,
        cardLast4,
        createTimeMs: BigInt(Date.now()),
      });
      payments.set(payment.paymentId, payment);
      paymentByOrder.set(orderId, payment.paymentId);
      return { payment };
    },
    refund(request) {
      const payment = find(request.paymentId);
      payment.status = PaymentStatus.REFUNDED;
      payments.set(payment.paymentId, payment);
      return { payment };
    },
    getPayment(request) {
      return { payment: find(request.paymentId) };
    },
  });
}
