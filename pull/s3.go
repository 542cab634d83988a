package pull

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// s3Blob reads s3://bucket/key (or gs://bucket/key through Google's
// S3-compatible XML API) with the AWS SDK's client: SigV4 signing, no
// retries of its own (ours resume), every connection through the egress.
func (f *Fetcher) s3Blob(loc *Location) (blob, error) {
	store := f.cfg.Endpoints.S3
	if loc.Kind == KindGCS {
		store = f.cfg.Endpoints.GCS
	}
	opts := s3.Options{
		Region:           store.region(loc.Kind),
		BaseEndpoint:     aws.String(store.endpoint(loc.Kind)),
		UsePathStyle:     store.PathStyle || store.Endpoint != "",
		HTTPClient:       f.httpClient(),
		RetryMaxAttempts: 1,
		// Ranged reads have no whole-object checksum to validate; our
		// SHA3-256 is the check.
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
	}
	if store.AccessKeyID != "" || store.SecretAccessKey != "" {
		opts.Credentials = credentials.NewStaticCredentialsProvider(store.AccessKeyID, store.SecretAccessKey, store.SessionToken)
	} else {
		opts.Credentials = aws.AnonymousCredentials{}
	}
	return &s3Blob{client: s3.New(opts), loc: loc, endpoint: store.endpoint(loc.Kind)}, nil
}

type s3Blob struct {
	client   *s3.Client
	loc      *Location
	endpoint string
}

func (b *s3Blob) open(ctx context.Context, off int64, validator string) (io.ReadCloser, blobInfo, error) {
	in := &s3.GetObjectInput{Bucket: aws.String(b.loc.Bucket), Key: aws.String(b.loc.Key)}
	if off > 0 {
		in.Range = aws.String(fmt.Sprintf("bytes=%d-", off))
		if validator != "" {
			in.IfMatch = aws.String(validator) // the same version, or 412
		}
	}
	out, err := b.client.GetObject(ctx, in)
	if err != nil {
		return nil, blobInfo{}, s3Err(err)
	}
	info := blobInfo{size: -1, validator: aws.ToString(out.ETag), origin: fmt.Sprintf("%s (endpoint %s)", b.loc.URL, b.endpoint)}
	if off == 0 {
		if out.ContentLength != nil {
			info.size = *out.ContentLength
		}
		return out.Body, info, nil
	}
	start, total, ok := parseContentRange(aws.ToString(out.ContentRange))
	if !ok || start != off {
		out.Body.Close()
		return nil, blobInfo{}, errStartOver
	}
	info.size = total
	return out.Body, info, nil
}

// s3Err classes an SDK error by its HTTP status and S3 error code.
func s3Err(err error) error {
	var re *smithyhttp.ResponseError
	if errors.As(err, &re) {
		code := re.HTTPStatusCode()
		var api smithy.APIError
		text := http.StatusText(code)
		if errors.As(err, &api) {
			text = api.ErrorCode() + ": " + api.ErrorMessage()
			switch api.ErrorCode() {
			case "NoSuchKey", "NoSuchBucket":
				return classErr(ErrNotFound, "%s", text)
			case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch":
				return classErr(ErrForbidden, "%s", text)
			}
		}
		switch code {
		case http.StatusPreconditionFailed, http.StatusRequestedRangeNotSatisfiable:
			return errStartOver // the object changed since the partial download
		}
		return statusErr(code, fmt.Sprintf("%d %s", code, text))
	}
	return netErr(err)
}
