# nginx -t refuses a misconfigured module with a message naming the
# directive; a valid configuration passes.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MR::Test qw(default_http);

my $server = <<'EOF';
server {
    listen 127.0.0.1:%%PORT%%;
    location /v1/ { modelroute_api; }
    location /admin/ { modelroute_admin; }
}
EOF

sub conf_ok {
    my ($http, $name) = @_;
    my $t = MR::Test->new(http => $http);
    my ($rc, $out) = $t->test_config;
    is($rc, 0, "$name: nginx -t passes") or diag $out;
    like($out, qr/test is successful/, "$name: test is successful");
}

# The config is refused and the message names each of @words.
sub conf_refused {
    my ($http, $name, @words) = @_;
    my $t = MR::Test->new(http => $http);
    my ($rc, $out) = $t->test_config;
    isnt($rc, 0, "$name: nginx -t fails");
    unlike($out, qr/test is successful/, "$name: not successful");
    for my $w (@words) {
        like($out, ref $w ? $w : qr/\Q$w\E/, "$name: message names $w")
            or diag $out;
    }
}

conf_ok(default_http(), 'default configuration');
conf_ok("modelroute_store %%STORE%%;\n"
    . "modelroute_store_map_size 64m;\n"
    . "modelroute_durability relaxed;\n"
    . "modelroute_idempotency_ttl 2s;\n"
    . "modelroute_key_rotation_grace 10m;\n"
    . "modelroute_model m1 per_request=1 per_image=0.5 per_second=0.000001"
    . " input_per_mtok=0.15 output_per_mtok=0.60 max_tokens=1 timeout=2m;\n"
    . $server, 'every directive and parameter');

my $store = "modelroute_store %%STORE%%;\n";

conf_refused($store . "modelroute_model m1 per_request=0.04 colour=blue;\n"
    . $server, 'unknown model parameter', 'modelroute_model', 'colour');

for my $price ('abc', '-1', '0.1234567', '', '1.2.3', '0x10') {
    conf_refused($store . "modelroute_model m1 per_request=$price;\n"
        . $server, "bad price '$price'", 'modelroute_model');
}
conf_refused($store . "modelroute_model m1 input_per_mtok=abc;\n" . $server,
    'bad per-token price', 'modelroute_model');
conf_refused($store . "modelroute_model m1 per_request=1 max_tokens=x;\n"
    . $server, 'bad max_tokens', 'modelroute_model');
conf_refused($store . "modelroute_model m1 per_request=1 timeout=soon;\n"
    . $server, 'bad timeout', 'modelroute_model');

conf_refused($store . "modelroute_model m1 per_request=0.04;\n"
    . "modelroute_model m1 per_request=0.05;\n" . $server,
    'duplicate model slug', 'modelroute_model', 'm1');

conf_refused("modelroute_model m1 per_request=0.04;\n" . $server,
    'modelroute_api without modelroute_store',
    qr/modelroute_store|modelroute_api/);

conf_refused($store . $server, 'modelroute_api without any model',
    qr/modelroute_model|modelroute_api/);

conf_refused($store . "modelroute_durability sometimes;\n"
    . "modelroute_model m1 per_request=0.04;\n" . $server,
    'bad durability', 'modelroute_durability');

conf_refused($store . "modelroute_store_map_size lots;\n"
    . "modelroute_model m1 per_request=0.04;\n" . $server,
    'bad map size', 'modelroute_store_map_size');

conf_refused($store . "modelroute_idempotency_ttl never;\n"
    . "modelroute_model m1 per_request=0.04;\n" . $server,
    'bad idempotency ttl', 'modelroute_idempotency_ttl');

conf_refused($store . "modelroute_store %%PREFIX%%/other;\n"
    . "modelroute_model m1 per_request=0.04;\n" . $server,
    'duplicate modelroute_store', 'modelroute_store');

done_testing();
