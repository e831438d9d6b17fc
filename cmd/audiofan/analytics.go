package main

import (
	"context"
	"errors"
	"io"
	"log/slog"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/audiofan/audiofan/subscribers"
	"github.com/audiofan/audiofan/subscribers/analytics"
)

// AnalyticsSettings are the settings of `audiofan analytics`.
type AnalyticsSettings struct {
	SubscriberSettings
	Analytics analytics.Config
}

func (s *AnalyticsSettings) validate() error {
	if err := s.SubscriberSettings.validate(); err != nil {
		return err
	}
	return s.Analytics.Validate()
}

var analyticsRole = role{
	service: true,
	name:    "analytics",
	summary: "talk time, levels, overtalk and dead air of every call, live and at its end, one replica of many",
	config:  func() any { return &AnalyticsSettings{} },
	run: func(ctx context.Context, cfg any, log *slog.Logger, _ io.Writer) error {
		s := cfg.(*AnalyticsSettings)
		if s.NATS.URL == "" {
			return errors.New("NATS_URL is empty: the analytics role needs a NATS server (or run `audiofan serve`)")
		}
		return runSubscriber(ctx, s.SubscriberSettings, "", log, analyticsFactory(s.Analytics, log))
	},
}

func analyticsFactory(cfg analytics.Config, log *slog.Logger) roleFactory {
	return func(ctx context.Context, js jetstream.JetStream, reg prometheus.Registerer) (subscribers.Role, func(), error) {
		a, err := analytics.New(ctx, cfg, js, reg, log)
		if err != nil {
			return subscribers.Role{}, nil, err
		}
		return a.Role(), func() {}, nil
	}
}
