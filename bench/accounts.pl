#!/usr/bin/env perl
# Makes N accounts, each with a full key and one execution, for the
# benchmarks of many accounts (bench/pg.sh):
#
#   perl bench/accounts.pl BASE N MODEL OUT [PROCS]
#
# BASE is http://127.0.0.1:PORT (admin API on /admin/); OUT gets a line per
# account, "<API key> <execution id> <org>". PROCS processes (8) share the
# work, each on one keep-alive connection.
use strict;
use warnings;
use HTTP::Tiny;
use JSON::PP;

my ($base, $n, $model, $out, $procs) = @ARGV;
die "usage: $0 BASE N MODEL OUT [PROCS]\n" unless $out;
$procs ||= 8;

my @kids;
for my $p (0 .. $procs - 1) {
    my $pid = fork // die "fork: $!";
    if ($pid) { push @kids, $pid; next }

    my $http = HTTP::Tiny->new(keep_alive => 1, timeout => 30);
    my $json = JSON::PP->new;
    my $call = sub {
        my ($method, $path, $body, $key) = @_;
        my %h = ('Content-Type' => 'application/json');
        $h{Authorization} = "Bearer $key" if $key;
        for my $try (1 .. 20) {
            my $r = $http->request($method, "$base$path",
                { headers => \%h, content => $json->encode($body) });
            return $json->decode($r->{content})
                if $r->{status} =~ /^20[12]$/;
            die "$method $path: $r->{status} $r->{content}\n"
                unless $r->{status} == 503 || $r->{status} == 599;
            select undef, undef, undef, 0.2;
        }
        die "$method $path: no answer\n";
    };

    open my $fh, '>', "$out.$p" or die "$out.$p: $!";
    for (my $i = $p; $i < $n; $i += $procs) {
        my $a = $call->(POST => '/admin/accounts',
            { name => "bench-$i", credit => '1000000.00' });
        my $org = $a->{id} // die "no account id\n";
        my $k = $call->(POST => "/admin/accounts/$org/keys",
            { permission => 'full' });
        my $key = $k->{key} // die "no key\n";
        my $e = $call->(POST => '/v1/executions',
            { model => $model, input => { prompt => 'hello' },
              idempotency_key => "setup-$i" }, $key);
        print $fh "$key $e->{id} $org\n";
    }
    close $fh or die;
    exit 0;
}

my $bad = 0;
for (@kids) { waitpid $_, 0; $bad ||= $? }
die "accounts.pl: a process failed\n" if $bad;

open my $all, '>', $out or die "$out: $!";
for my $p (0 .. $procs - 1) {
    open my $fh, '<', "$out.$p" or die;
    print {$all} <$fh>;
    close $fh;
    unlink "$out.$p";
}
close $all or die;
