"""Stripe's test PaymentMethods and tokens, its currencies and minimum charge amounts (as the fake knows)."""

from __future__ import annotations

_GENERIC = ("card_declined", "generic_decline", "Your card was declined.")
_NO_FUNDS = ("card_declined", "insufficient_funds", "Your card has insufficient funds.")
_EXPIRED = ("expired_card", "expired_card", "Your card has expired.")
# Stripe's test PaymentMethods and tokens (docs.stripe.com/testing) -> what confirming them does:
# "succeeds", "3ds", or a decline as (code, decline_code, message).
Outcome = str | tuple[str, str, str]
PAYMENT_METHODS: dict[str, Outcome] = {
    "pm_card_visa": "succeeds",
    "pm_card_visa_debit": "succeeds",
    "pm_card_mastercard": "succeeds",
    "pm_card_amex": "succeeds",
    "pm_card_chargeDeclined": _GENERIC,
    "pm_card_visa_chargeDeclined": _GENERIC,
    "pm_card_chargeDeclinedInsufficientFunds": _NO_FUNDS,
    "pm_card_visa_chargeDeclinedInsufficientFunds": _NO_FUNDS,
    "pm_card_chargeDeclinedExpiredCard": _EXPIRED,
    "pm_card_threeDSecure2Required": "3ds",
    "pm_card_threeDSecureRequired": "3ds",
    "pm_card_authenticationRequired": "3ds",
}
TOKENS: dict[str, Outcome] = {
    "tok_visa": "succeeds",
    "tok_visa_debit": "succeeds",
    "tok_mastercard": "succeeds",
    "tok_amex": "succeeds",
    "tok_chargeDeclined": _GENERIC,
    "tok_visa_chargeDeclined": _GENERIC,
    "tok_chargeDeclinedInsufficientFunds": _NO_FUNDS,
    "tok_visa_chargeDeclinedInsufficientFunds": _NO_FUNDS,
    "tok_chargeDeclinedExpiredCard": _EXPIRED,
    "tok_threeDSecure2Required": "3ds",
    "tok_threeDSecureRequired": "3ds",
    "tok_authenticationRequired": "3ds",
}
# As live Stripe lists them in its "Invalid currency" message.
CURRENCIES = (
    "usd, aed, afn, all, amd, ang, aoa, ars, aud, awg, azn, bam, bbd, bdt, bgn, bhd, bif, bmd, bnd, bob, "
    "brl, bsd, bwp, byn, bzd, cad, cdf, chf, clp, cny, cop, crc, cve, czk, djf, dkk, dop, dzd, egp, etb, "
    "eur, fjd, fkp, gbp, gel, gip, gmd, gnf, gtq, gyd, hkd, hnl, hrk, htg, huf, idr, ils, inr, isk, jmd, "
    "jod, jpy, kes, kgs, khr, kmf, krw, kwd, kyd, kzt, lak, lbp, lkr, lrd, lsl, mad, mdl, mga, mkd, mmk, "
    "mnt, mop, mro, mur, mvr, mwk, mxn, myr, mzn, nad, ngn, nio, nok, npr, nzd, omr, pab, pen, pgk, php, "
    "pkr, pln, pyg, qar, ron, rsd, rub, rwf, sar, sbd, scr, sek, sgd, shp, sle, sll, sos, srd, std, szl, "
    "thb, tjs, tnd, top, try, ttd, twd, tzs, uah, ugx, uyu, uzs, vnd, vuv, wst, xaf, xcd, xof, xpf, yer, "
    "zar, zmw, usdc, btn, ghs, eek, lvl, svc, vef, ltl"
)
SUPPORTED_CURRENCIES = frozenset(CURRENCIES.split(", "))
# Minimum charge amounts in minor units (docs.stripe.com/currencies#minimum-and-maximum-charge-amounts) and
# how Stripe writes them; currencies not listed must convert to at least 50 US cents, which the fake does
# not check.
MINIMUM_AMOUNTS: dict[str, tuple[int, str]] = {
    "usd": (50, "$0.50"),
    "aud": (50, "$0.50"),
    "cad": (50, "$0.50"),
    "eur": (50, "\u20ac0.50"),
    "gbp": (30, "\u00a30.30"),
    "jpy": (50, "\u00a550"),
}
