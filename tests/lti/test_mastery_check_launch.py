"""A mastery check's launch URL names its placement in the query; launches through it work like any other."""

from __future__ import annotations

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from plugin.lti.deeplink import build_response, placements_for
from plugin.lti.keys import SigningKey

DL = "https://purl.imsglobal.org/spec/lti-dl/claim/"
CHECK_URL = "http://localhost/lti/launch?placement=mastery-check&module=riverside-canvas%3A201"


def _key() -> SigningKey:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return SigningKey(kid="tool-key-1", private_pem=pem)


def test_deep_link_content_items_carry_the_check_url() -> None:
    options = placements_for([("riverside-canvas:201", "Unit 1: Linear Equations")])
    token = build_response(issuer="https://canvas.instructure.com", client_id="10000000000001",
                           deployment_id="dep-1", return_url="https://riverside.instructure.com/dl-return",
                           data=None, base_url="http://localhost", chosen=options, key=_key())

    items = jwt.decode(token, options={"verify_signature": False})[DL + "content_items"]

    dashboard, profile, check = items
    assert dashboard["url"] == profile["url"] == "http://localhost/lti/launch"
    assert check["url"] == CHECK_URL
    assert check["custom"] == {"trailmark_placement": "mastery-check", "trailmark_module": "riverside-canvas:201"}
    assert check["lineItem"] == {"scoreMaximum": 100.0, "label": "Mastery check: Unit 1: Linear Equations",
                                 "resourceId": "mastery-check:riverside-canvas:201",
                                 "tag": "trailmark-mastery-check"}


def test_a_launch_through_the_check_url_opens_the_view(client, lti) -> None:
    custom = {"trailmark_placement": "mastery-check", "trailmark_module": "riverside-canvas:201"}
    for role, panel in (("student", "/p/student?"), ("teacher", "/p/teacher?")):
        resp = lti.launch(client, role, login_params={"target_link_uri": CHECK_URL},
                          lti_target_link_uri=CHECK_URL, lti_custom=custom)
        assert resp.status_code == 303, resp.get_data(as_text=True)[:500]
        assert panel in resp.headers["Location"]
        assert client.get(resp.headers["Location"]).status_code == 200


def test_a_check_url_on_another_host_is_refused(client, lti) -> None:
    elsewhere = "https://trailmark.example.evil.test/lti/launch?placement=mastery-check&module=201"
    login = client.get("/lti/login", query_string={
        "iss": lti.issuer, "login_hint": "hint-1", "target_link_uri": elsewhere, "client_id": lti.client_id,
        "lti_deployment_id": lti.deployment_id})
    assert login.status_code == 400 and "bad_target_link_uri" in login.get_data(as_text=True)

    st, nonce = lti.login(client, target_link_uri=CHECK_URL)
    token = lti.sign(lti.claims(nonce, lti_target_link_uri=elsewhere))
    resp = client.post("/lti/launch", data={"id_token": token, "state": st})
    assert resp.status_code == 400 and "bad_target_link_uri" in resp.get_data(as_text=True)
