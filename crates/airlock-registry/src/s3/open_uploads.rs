//! S3's `ListMultipartUploads`, which object_store does not offer. gc needs it: a replica killed
//! between starting a multipart upload and recording it in its session, or in the middle of a
//! streamed write, leaves an upload that S3 keeps (and bills) until it is aborted, and that no
//! object listing shows.
//!
//! The request is signed with object_store's own SigV4 signer and the store's credentials; the
//! answer is bounded and parsed with quick-xml (already in the tree through object_store).

use std::io;
use std::time::Duration;

use futures::StreamExt;
use object_store::aws::{AmazonS3, AwsAuthorizer};
use serde::Deserialize;

/// The most a page of the listing may be (1,000 uploads of long keys fit in well under 2 MiB).
const PAGE_LIMIT: usize = 8 * 1024 * 1024;

/// One upload S3 still holds open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OpenUpload {
    /// Its object key, as in the bucket (with the backend's prefix).
    pub key: String,
    /// The upload id.
    pub id: String,
    /// When it started (seconds since the epoch), when S3 said so readably.
    pub initiated: Option<i64>,
}

/// How to reach the bucket for the raw call.
pub(crate) struct UploadLister {
    /// `https://s3.REGION.amazonaws.com/BUCKET`, `http://127.0.0.1:9000/BUCKET`,
    /// `https://BUCKET.s3.REGION.amazonaws.com`: as object_store addresses the bucket.
    bucket_url: String,
    region: String,
    client: reqwest::Client,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListResult {
    #[serde(default)]
    is_truncated: bool,
    next_key_marker: Option<String>,
    next_upload_id_marker: Option<String>,
    #[serde(default, rename = "Upload")]
    uploads: Vec<UploadEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UploadEntry {
    key: String,
    upload_id: String,
    initiated: Option<String>,
}

/// Where the next page starts: a key and an upload id (empty when S3 gave none).
type Markers = (String, String);

/// Parses one page: the uploads and, when there is more, the markers of the next page.
fn parse_page(xml: &str) -> io::Result<(Vec<OpenUpload>, Option<Markers>)> {
    let page: ListResult = quick_xml::de::from_str(xml).map_err(|e| io::Error::other(format!("cannot read the bucket's list of multipart uploads: {e}")))?;
    let uploads = page
        .uploads
        .into_iter()
        .map(|u| OpenUpload { initiated: u.initiated.as_deref().and_then(airlock_oci::time::parse_rfc3339), key: u.key, id: u.upload_id })
        .collect();
    let next = match (page.is_truncated, page.next_key_marker, page.next_upload_id_marker) {
        (true, Some(key), Some(id)) => Some((key, id)),
        (true, Some(key), None) => Some((key, String::new())),
        _ => None,
    };
    Ok((uploads, next))
}

/// The bucket's address as object_store computes it from the same settings.
pub(crate) fn bucket_url(endpoint: Option<&str>, virtual_hosted: bool, bucket: &str, region: &str) -> String {
    match (endpoint, virtual_hosted) {
        (Some(endpoint), true) => endpoint.trim_end_matches('/').to_owned(),
        (Some(endpoint), false) => format!("{}/{bucket}", endpoint.trim_end_matches('/')),
        (None, true) => format!("https://{bucket}.s3.{region}.amazonaws.com"),
        (None, false) => format!("https://s3.{region}.amazonaws.com/{bucket}"),
    }
}

impl UploadLister {
    pub(crate) fn new(bucket_url: String, region: String) -> Result<UploadLister, String> {
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(airlock_store::remote::tls::client_config(Vec::new()))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(UploadLister { bucket_url, region, client })
    }

    /// Every open upload whose key starts with `prefix`.
    pub(crate) async fn list(&self, store: &AmazonS3, prefix: &str) -> io::Result<Vec<OpenUpload>> {
        let mut uploads = Vec::new();
        let mut markers: Option<Markers> = None;
        // 10,000 pages of 1,000: far beyond any registry; a bucket that never ends is refused.
        for _ in 0..10_000 {
            let mut url = reqwest::Url::parse(&format!("{}/", self.bucket_url)).map_err(|e| io::Error::other(format!("bucket address `{}`: {e}", self.bucket_url)))?;
            {
                let mut query = url.query_pairs_mut();
                query.append_key_only("uploads");
                if !prefix.is_empty() {
                    query.append_pair("prefix", prefix);
                }
                if let Some((key, id)) = &markers {
                    query.append_pair("key-marker", key);
                    if !id.is_empty() {
                        query.append_pair("upload-id-marker", id);
                    }
                }
            }
            let credential = store.credentials().get_credential().await.map_err(|e| io::Error::other(e.to_string()))?;
            let mut signed: object_store::client::HttpRequest =
                http::Request::builder().method("GET").uri(url.as_str()).body(object_store::client::HttpRequestBody::empty()).map_err(io::Error::other)?;
            AwsAuthorizer::new(&credential, "s3", &self.region).authorize(&mut signed, None);
            let response = self.client.get(url.clone()).headers(signed.headers().clone()).send().await.map_err(|e| io::Error::other(format!("listing multipart uploads: {e}")))?;
            let status = response.status();
            let body = read_bounded(response).await?;
            if !status.is_success() {
                let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
                return Err(io::Error::other(format!("listing multipart uploads: {status}: {text}")));
            }
            let text = String::from_utf8(body).map_err(|_| io::Error::other("the list of multipart uploads is not UTF-8"))?;
            let (page, next) = parse_page(&text)?;
            uploads.extend(page);
            match next {
                Some(next) if Some(&next) != markers.as_ref() => markers = Some(next),
                _ => return Ok(uploads),
            }
        }
        Err(io::Error::other("the list of multipart uploads did not end after 10,000 pages"))
    }
}

async fn read_bounded(response: reqwest::Response) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| io::Error::other(format!("listing multipart uploads: {e}")))?;
        if body.len() + chunk.len() > PAGE_LIMIT {
            return Err(io::Error::other(format!("a page of the list of multipart uploads is larger than {PAGE_LIMIT} bytes: refused")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_read_with_its_markers() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>b</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>
  <NextKeyMarker>reg/uploads/x/data.assembled</NextKeyMarker><NextUploadIdMarker>id2</NextUploadIdMarker>
  <MaxUploads>2</MaxUploads><IsTruncated>true</IsTruncated>
  <Upload><Key>reg/blobs/sha256/ab/data</Key><UploadId>id1</UploadId><Initiator><ID>x</ID></Initiator><StorageClass>STANDARD</StorageClass><Initiated>2010-11-10T20:48:33.000Z</Initiated></Upload>
  <Upload><Key>reg/uploads/x/data.assembled</Key><UploadId>id2</UploadId><Initiated>bad</Initiated></Upload>
</ListMultipartUploadsResult>"#;
        let (uploads, next) = parse_page(xml).unwrap();
        assert_eq!(
            uploads,
            [
                OpenUpload { key: "reg/blobs/sha256/ab/data".into(), id: "id1".into(), initiated: Some(1_289_422_113) },
                OpenUpload { key: "reg/uploads/x/data.assembled".into(), id: "id2".into(), initiated: None },
            ]
        );
        assert_eq!(next, Some(("reg/uploads/x/data.assembled".into(), "id2".into())));
        let (none, end) = parse_page("<ListMultipartUploadsResult><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>").unwrap();
        assert!(none.is_empty() && end.is_none());
        assert!(parse_page("<not xml").is_err());
    }

    proptest::proptest! {
        /// The bucket's answer is untrusted: any text is a page or an error, never a panic, and
        /// a page's markers are only given when it says it is truncated.
        #[test]
        fn any_answer_is_read_or_refused(text in ".{0,400}", key in "[a-z/.]{0,20}", id in "[a-zA-Z0-9]{0,12}") {
            let _ = parse_page(&text);
            let wrapped = format!("<ListMultipartUploadsResult><IsTruncated>false</IsTruncated><Upload><Key>{key}</Key><UploadId>{id}</UploadId><Initiated>{text}</Initiated></Upload></ListMultipartUploadsResult>");
            if let Ok((uploads, next)) = parse_page(&wrapped) {
                proptest::prop_assert!(next.is_none());
                proptest::prop_assert!(uploads.len() <= 1);
            }
        }
    }

    #[test]
    fn the_bucket_is_addressed_as_object_store_does() {
        assert_eq!(bucket_url(Some("http://127.0.0.1:9000/"), false, "b", "us-east-1"), "http://127.0.0.1:9000/b");
        assert_eq!(bucket_url(Some("https://b.minio.example"), true, "b", "us-east-1"), "https://b.minio.example");
        assert_eq!(bucket_url(None, true, "b", "eu-west-1"), "https://b.s3.eu-west-1.amazonaws.com");
        assert_eq!(bucket_url(None, false, "b", "eu-west-1"), "https://s3.eu-west-1.amazonaws.com/b");
    }
}
