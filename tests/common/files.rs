//! Files for upload tests: a real PNG, disguised binaries, and multipart uploads.

use base64::Engine;

use super::Server;

/// A valid 24×24 RGB PNG (982 bytes).
pub fn png() -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(PNG_24)
        .expect("png")
}

const PNG_24: &str = "iVBORw0KGgoAAAANSUhEUgAAABgAAAAYCAIAAABvFaqvAAADnUlEQVR4nBXUqxpFERSF0Z1lWZZlWZZlWZZlWZblP8uyLHuO43iA8Vm3+X0f4kN+qA/9YT7sh/vwH+EjfqSP/FE+6kf76B/jg4/5sT72x/m4H98nEAIpUAItMAIrcAIvCIIoSIIsKIIqaIIuGAIEU7AEW3AEVzxIIiRSoiRaYiRW4iReEiRRkiRZUiRV0iRdMiRIpmRJtuRIrnyQQiikQim0wiiswim8IiiiIimyoiiqoim6YihQTMVSbMVRXPUgjdBIjdJojdFYjdN4TdBETdJkTdFUTdN0zdCgmZql2ZqjufpBBmGQBmXQBmOwBmfwhmCIhmTIhmKohmbohmHAMA3LsA3HcM2DLMIiLcqiLcZiLc7iLcESLcmSLcVSLc3SLcOCZVqWZVuO5doHOYRDOpRDO4zDOpzDO4IjOpIjO4qjOpqjO4YDx3Qsx3Ycx3UP8giP9CiP9hiP9TiP9wRP9CRP9hRP9TRP9wwPnulZnu05nusfFBABGVABHTABG3ABHwiBGEiBHCiBGmiBHhgBAjOwAjtwAjc8KCIiMqIiOmIiNuIiPhIiMZIiOVIiNdIiPTIiRGZkRXbkRG58UEIkZEIldMIkbMIlfCIkYiIlcqIkaqIlemIkSMzESuzESdz0oIzIyIzK6IzJ2IzL+EzIxEzK5EzJ1EzL9MzIkJmZldmZk7n5QQVRkAVV0AVTsAVX8IVQiIVUyIVSqIVW6IVRoDALq7ALp3DLgyqiIiuqoiumYiuu4iuhEiupkiulUiut0iujQmVWVmVXTuXWBzVEQzZUQzdMwzZcwzdCIzZSIzdKozZaozdGg8ZsrMZunMZtD+qIjuyoju6Yju24ju+ETuykTu6UTu20Tu+MDp3ZWZ3dOZ3bHzQQAzlQAz0wAztwAz8IgzhIgzwogzpogz4YAwZzsAZ7cAZ3POgfUi9eXjC8k37H+M7oHcBb3bd0b13eoN+IXnNfW15B7ysP+b8JCzYcuC8yv4mYyIma6ImZ2Imb+EmYxEma5EmZ1Emb9MmYf2ZO1mRPzuTOBy3EQi7UQi/Mwi7cwi/CIi7SIi/Koi7aoi/G+n9mLtZiL87irgdtxEZu1EZvzMZu3MZvwiZu0iZvyqZu2qZvxv6XNDdrszdnc/eDDuIgD+qgD+ZgD+7gD+EQD+mQD+VQD+3QD+P8GzMP67AP53DPgy7iIi/qoi/mYi/u4i/hEi/pki/lUi/t0i/j/ts7L+uyL+dyLz+3RJquucgKKAAAAABJRU5ErkJggg==";

/// The first bytes of a 64-bit ELF executable, padded.
pub fn elf() -> Vec<u8> {
    let mut v = b"\x7fELF\x02\x01\x01\x00".to_vec();
    v.extend(std::iter::repeat_n(0u8, 120));
    v
}

/// A ZIP archive's local file header, padded.
pub fn zip() -> Vec<u8> {
    let mut v = b"PK\x03\x04\x14\x00\x00\x00".to_vec();
    v.extend(std::iter::repeat_n(7u8, 120));
    v
}

/// A `multipart/form-data` body with one field: (content type, body).
pub fn multipart(field: &str, name: &str, bytes: &[u8]) -> (String, Vec<u8>) {
    let boundary = format!("spool-test-{}", uuid::Uuid::new_v4().simple());
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Uploads `bytes` as `name` to a session's attachments: (status, body).
pub async fn upload(
    s: &Server,
    session: &str,
    name: &str,
    bytes: &[u8],
) -> (u16, serde_json::Value) {
    let (content_type, body) = multipart("file", name, bytes);
    let r = s
        .req(
            reqwest::Method::POST,
            &format!("/api/v1/sessions/{session}/attachments"),
        )
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("upload");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}
